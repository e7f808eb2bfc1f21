//! TLS interception end to end: `shoal ca init`, real curl and real git + git-lfs through daemons that
//! terminate the CONNECT tunnels of `proxy.intercept` hosts with their own CA, against a real Git LFS
//! server (giftless) over HTTPS; an origin whose certificate the daemon does not trust (502 saying so,
//! nothing cached); a host not listed (tunnelled: the client sees the origin's own certificate); and a
//! daemon that refuses to start without its CA. Every address is on 127.0.0.0/8.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{self, cached_files, free_addr, shoal, Proc};
use common::curl::curl;
use common::lfs::{git, git_home, publish, run, test_ca, Giftless, LFS_HOST};
use common::*;

/// `shoal ca init --dir dir`: the CA's certificate path.
fn ca_init(dir: &Path) -> PathBuf {
    let o = shoal().args(["ca", "init", "--dir"]).arg(dir).output().unwrap();
    assert!(o.status.success(), "shoal ca init: {}", String::from_utf8_lossy(&o.stderr));
    dir.join("ca.crt")
}

/// A daemon config intercepting `hosts` on any port, trusting `origin_ca` for origins; `ca_dir` is the
/// interception CA (`None`: the default, `<data_dir>/ca`).
fn intercept_yaml(hosts: &[&str], ca_dir: Option<&Path>, origin_ca: &Path) -> String {
    let mut y = format!("proxy:\n  intercept: {hosts:?}\n  connect_ports: [\"1-65535\"]\n");
    if let Some(d) = ca_dir {
        y += &format!("  intercept_ca: {}\n", d.display());
    }
    y + &format!("upstream:\n  ca_file: {}\n", origin_ca.display())
}

/// A bundle of the system's roots and `extra`, as a client that trusts Shoal's CA would use.
fn bundle(dir: &Path, extra: &Path) -> PathBuf {
    let mut pem = std::fs::read("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    pem.extend(std::fs::read(extra).unwrap());
    let p = dir.join("bundle.pem");
    std::fs::write(&p, pem).unwrap();
    p
}

/// An HTTPS origin (Python's http.server over TLS) serving `root` on `ip`, its certificate for `host`
/// signed by a fresh test CA. Its access log lines are the process's stderr.
struct TlsOrigin {
    proc: Proc,
    port: u16,
    ca: PathBuf,
    root: PathBuf,
}

const TLS_SERVER: &str = r#"
import functools, http.server, ssl, sys
ip, port, root, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
# HTTP/1.1: the origin keeps connections alive (its answers carry Content-Length).
http.server.SimpleHTTPRequestHandler.protocol_version = "HTTP/1.1"
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
server = http.server.ThreadingHTTPServer((ip, port), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
print("serving", flush=True, file=sys.stderr)
server.serve_forever()
"#;

impl TlsOrigin {
    fn start(dir: &Path, ip: &str, host: &str) -> TlsOrigin {
        let tls = dir.join("tls");
        let ca = test_ca(&tls, &[host]);
        let root = dir.join("www");
        std::fs::create_dir_all(&root).unwrap();
        let port = free_addr(ip).port();
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(TLS_SERVER).args([ip, &port.to_string()]).arg(&root);
        cmd.arg(tls.join("cert.pem")).arg(tls.join("key.pem"));
        let proc = Proc::spawn("tls-origin", cmd);
        proc.wait_for("serving", Duration::from_secs(20));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect((ip, port)).is_err() {
            assert!(Instant::now() < deadline, "the TLS origin did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsOrigin { proc, port, ca, root }
    }

    fn gets(&self) -> usize {
        self.proc.count("\"GET ")
    }
}

/// The download href giftless gives for one object (a batch call through `proxy`, so it is intercepted
/// pass-through: a POST to the origin over verified HTTPS).
fn download_href(proxy: SocketAddr, dir: &Path, server: &Giftless, cacert: &Path, oid: &str, size: usize) -> String {
    let body =
        format!(r#"{{"operation":"download","transfers":["basic"],"objects":[{{"oid":"{oid}","size":{size}}}]}}"#);
    let got = curl(
        proxy,
        dir,
        &[
            "--cacert",
            cacert.to_str().unwrap(),
            "-H",
            "Accept: application/vnd.git-lfs+json",
            "-H",
            "Content-Type: application/vnd.git-lfs+json",
            "-d",
            &body,
            &format!("{}/objects/batch", server.url()),
        ],
    );
    assert_eq!(got.status, 200, "batch call: {} {}", got.stderr, String::from_utf8_lossy(&got.body));
    let v: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    let href = v["objects"][0]["actions"]["download"]["href"].as_str().expect("a download href");
    assert!(href.starts_with(&format!("https://{LFS_HOST}:{}/", server.port)), "{href}");
    href.to_owned()
}

#[test]
fn curl_through_interception_cold_then_from_a_peer_then_a_local_hit() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Giftless::start_https(tmp.path());
    let origin_ca = server.ca.clone().unwrap();
    let home = git_home(&tmp.path().join("home"));
    let bytes = content(90, (9 << 20) + 4321);
    let files = vec![("model.bin", bytes.clone())];
    publish(&home, &tmp.path().join("work"), &tmp.path().join("repo.git"), &server, &files);
    let uploaded_gets = server.object_gets();

    // A's CA in its default place (<data_dir>/ca); B names the same directory with proxy.intercept_ca.
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let shoal_ca = ca_init(&a_dir.join("ca"));
    let sched = cluster::scheduler("127.0.0.3");
    let a = cluster::daemon_with(
        "127.0.0.120",
        &[sched.addr],
        false,
        &a_dir,
        &intercept_yaml(&[LFS_HOST], None, &origin_ca),
    );
    let b_yaml = intercept_yaml(&["*.unused.test", LFS_HOST], Some(&a_dir.join("ca")), &origin_ca);
    let b = cluster::daemon_with("127.0.0.121", &[sched.addr], false, &b_dir, &b_yaml);

    let oid = hex::encode(sha256(&bytes));
    let href = download_href(a.proxy, tmp.path(), &server, &shoal_ca, &oid, bytes.len());
    assert_eq!(server.object_gets(), uploaded_gets, "the batch call fetched no object");
    let get = |proxy| curl(proxy, tmp.path(), &["--cacert", shoal_ca.to_str().unwrap(), &href]);

    let cold = get(a.proxy);
    assert_eq!(cold.status, 200, "{}", cold.stderr);
    assert!(cold.body == bytes, "cold on A: the bytes differ");
    assert_eq!(cold.header("x-shoal-source"), Some("origin"));
    assert_eq!(cold.header("x-shoal-task-id"), Some(oid.as_str()), "the task is the LFS oid");
    assert_eq!(server.object_gets() - uploaded_gets, 1, "cold on A: one origin GET");

    let peer = get(b.proxy);
    assert_eq!(peer.status, 200, "{}", peer.stderr);
    assert!(peer.body == bytes, "on B: the bytes differ");
    assert_eq!(peer.header("x-shoal-source"), Some("peer"));
    assert_eq!(server.object_gets() - uploaded_gets, 1, "on B: no object GET reached the origin");
    // The href carries a jwt: the copy is private, and B asked the origin first (HEAD), as plain HTTP does.
    assert_eq!(server.object_requests("HEAD"), 1, "on B: one authorization probe");

    let hit = get(a.proxy);
    assert_eq!(hit.status, 200, "{}", hit.stderr);
    assert!(hit.body == bytes, "hit on A: the bytes differ");
    assert_eq!(hit.header("x-shoal-source"), Some("local"));
    assert_eq!(server.object_gets() - uploaded_gets, 1, "hit on A: no origin GET");
}

#[test]
fn git_lfs_clone_through_interception_cold_then_from_a_peer_then_a_local_hit() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Giftless::start_https(tmp.path());
    let origin_ca = server.ca.clone().unwrap();
    let home = git_home(&tmp.path().join("home"));
    let files = vec![
        ("model.bin", content(91, (6 << 20) + 777)),
        ("data.bin", content(92, 3 << 20)),
        ("small.bin", content(93, 100_000)),
    ];
    let bare = tmp.path().join("repo.git");
    publish(&home, &tmp.path().join("work"), &bare, &server, &files);
    let uploaded_gets = server.object_gets();
    let heads_before = server.object_requests("HEAD");

    let shoal_ca = ca_init(&tmp.path().join("shoal-ca"));
    let yaml = intercept_yaml(&[LFS_HOST], Some(&tmp.path().join("shoal-ca")), &origin_ca);
    let sched = cluster::scheduler("127.0.0.3");
    let a = cluster::daemon_with("127.0.0.122", &[sched.addr], false, &tmp.path().join("a"), &yaml);
    let b = cluster::daemon_with("127.0.0.123", &[sched.addr], false, &tmp.path().join("b"), &yaml);
    // git-lfs trusts GIT_SSL_CAINFO alone: the system's roots and Shoal's CA, not the origin's test CA.
    let cainfo = bundle(tmp.path(), &shoal_ca);
    let clone = |proxy: SocketAddr, dest: &str| {
        let mut c = git(&home);
        // No insteadOf and no href rewrite: the LFS API and objects stay https, through CONNECT.
        c.env("https_proxy", format!("http://{proxy}")).env("GIT_SSL_CAINFO", &cainfo);
        c.args(["clone", "-q"]).arg(format!("file://{}", bare.display())).arg(tmp.path().join(dest));
        run(c, "git clone through interception");
        for (name, bytes) in &files {
            let got = std::fs::read(tmp.path().join(dest).join(name)).unwrap();
            assert!(got.len() == bytes.len() && sha256(&got) == sha256(bytes), "{name} differs in {dest}");
        }
    };

    clone(a.proxy, "clone-a1");
    let cold = server.object_gets() - uploaded_gets;
    assert_eq!(cold, files.len(), "cold clone on A: each object fetched from the origin once");
    assert!(a.proc.count("CONNECT intercepted") > 0, "the tunnel was intercepted");

    clone(b.proxy, "clone-b");
    assert_eq!(server.object_gets() - uploaded_gets, cold, "clone on B: objects came from A, not the origin");
    let heads = server.object_requests("HEAD") - heads_before;
    assert_eq!(heads, files.len(), "clone on B: one authorization probe per object");

    // giftless's jwt changes once a second: the next batch call gets new ones.
    std::thread::sleep(Duration::from_millis(1100));
    clone(a.proxy, "clone-a2");
    assert_eq!(server.object_gets() - uploaded_gets, cold, "second clone on A: local hits");
    let heads = server.object_requests("HEAD") - heads_before;
    assert_eq!(heads, 2 * files.len(), "a new batch call, a new jwt: asked again");
}

#[test]
fn a_listed_host_whose_certificate_is_not_trusted_gets_a_502_saying_so_and_nothing_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    // The origin's certificate is signed by a CA the daemon does not trust (it trusts another test CA).
    let origin = TlsOrigin::start(&tmp.path().join("origin"), "127.0.0.2", LFS_HOST);
    let oid = "ab".repeat(32);
    std::fs::write(origin.root.join(&oid), b"must not be served").unwrap();
    std::fs::write(origin.root.join("plain.txt"), b"must not be served either").unwrap();
    let trusted = test_ca(&tmp.path().join("other-ca"), &["other.test"]);
    let shoal_ca = ca_init(&tmp.path().join("shoal-ca"));
    let yaml = intercept_yaml(&[LFS_HOST], Some(&tmp.path().join("shoal-ca")), &trusted);
    let d = cluster::daemon_with("127.0.0.124", &[], false, &tmp.path().join("d"), &yaml);
    let base = format!("https://{LFS_HOST}:{}", origin.port);
    // (Both test CAs are named alike: rustls finds the trusted one and reports a bad signature.)
    let want = format!("shoal: upstream certificate for {LFS_HOST} not trusted: invalid peer certificate: ");

    // The P2P path (a 64-hex name is a task) and pass-through, each twice: a refusal is never cached.
    for path in [format!("/{oid}"), "/plain.txt".to_owned(), format!("/{oid}")] {
        let got = curl(d.proxy, tmp.path(), &["--cacert", shoal_ca.to_str().unwrap(), &format!("{base}{path}")]);
        assert_eq!(got.status, 502, "{path}: {}", got.stderr);
        let body = String::from_utf8_lossy(&got.body);
        assert!(body.starts_with(&want) && body.lines().count() == 1, "{path}: {body}");
    }
    assert_eq!(origin.gets(), 0, "no request was sent over an unverified connection");
    assert_eq!(cached_files(&d.data_dir), 0, "nothing cached");
    // The same origin, trusted, is served: the 502 was the certificate's doing.
    let yaml = intercept_yaml(&[LFS_HOST], Some(&tmp.path().join("shoal-ca")), &origin.ca);
    let ok = cluster::daemon_with("127.0.0.125", &[], false, &tmp.path().join("ok"), &yaml);
    let got = curl(ok.proxy, tmp.path(), &["--cacert", shoal_ca.to_str().unwrap(), &format!("{base}/plain.txt")]);
    assert_eq!((got.status, got.body.as_slice()), (200, &b"must not be served either"[..]), "{}", got.stderr);
}

#[test]
fn a_host_not_listed_is_tunnelled_and_the_client_sees_the_origins_own_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let origin = TlsOrigin::start(&tmp.path().join("origin"), "127.0.0.1", "localhost");
    std::fs::write(origin.root.join("hello.txt"), b"hello over the origin's TLS").unwrap();
    let listed = TlsOrigin::start(&tmp.path().join("listed"), "127.0.0.2", LFS_HOST);
    std::fs::write(listed.root.join("hello.txt"), b"hello through interception").unwrap();
    let shoal_ca = ca_init(&tmp.path().join("shoal-ca"));
    let yaml = intercept_yaml(&[LFS_HOST], Some(&tmp.path().join("shoal-ca")), &listed.ca);
    let d = cluster::daemon_with("127.0.0.126", &[], false, &tmp.path().join("d"), &yaml);
    let fetch = |url: &str, ca: &Path| curl(d.proxy, tmp.path(), &["-v", "--cacert", ca.to_str().unwrap(), url]);
    let issuer = |stderr: &str| {
        stderr.lines().find_map(|l| l.split_once("issuer: ").map(|(_, i)| i.to_owned())).unwrap_or_default()
    };

    let url = format!("https://localhost:{}/hello.txt", origin.port);
    let got = fetch(&url, &origin.ca);
    assert_eq!((got.status, got.body.as_slice()), (200, &b"hello over the origin's TLS"[..]), "{}", got.stderr);
    assert!(issuer(&got.stderr).contains("shoal test origin CA"), "the origin's issuer: {}", got.stderr);
    // Shoal's CA does not vouch for it: nothing was issued for this host.
    let refused = fetch(&url, &shoal_ca);
    assert!(refused.body.is_empty() && refused.stderr.contains("SSL certificate problem"), "{}", refused.stderr);

    // The listed host through the same daemon: Shoal's certificate, and keep-alive inside the tunnel (two
    // requests, one TLS connection).
    let listed_url = format!("https://{LFS_HOST}:{}/hello.txt", listed.port);
    let got = curl(d.proxy, tmp.path(), &["-v", "--cacert", shoal_ca.to_str().unwrap(), &listed_url, &listed_url]);
    assert_eq!((got.status, got.body.as_slice()), (200, &b"hello through interception"[..]), "{}", got.stderr);
    assert!(issuer(&got.stderr).contains("Shoal interception CA"), "Shoal's issuer: {}", got.stderr);
    assert_eq!(got.stderr.matches("issuer: ").count(), 1, "one handshake for both requests: {}", got.stderr);
    assert_eq!(listed.gets(), 2);
}

#[test]
fn connect_ports_and_denied_destinations_still_apply_to_intercepted_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let shoal_ca = ca_init(&tmp.path().join("shoal-ca"));
    let origin_ca = test_ca(&tmp.path().join("origin-ca"), &[LFS_HOST]);
    let yaml = format!(
        "proxy:\n  intercept: [{LFS_HOST}]\n  intercept_ca: {}\n  deny_destinations: [127.0.0.2/32]\n\
         upstream:\n  ca_file: {}\n",
        tmp.path().join("shoal-ca").display(),
        origin_ca.display()
    );
    let d = cluster::daemon_with("127.0.0.127", &[], false, &tmp.path().join("d"), &yaml);
    // connect_ports is [443] by default: another port is refused before anything is issued.
    let answer = connect_raw(d.proxy, &format!("{LFS_HOST}:8443"));
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("proxy.connect_ports"), "{answer}");
    // Port 443, but lfs-origin.test is 127.0.0.2, which deny_destinations refuses.
    let answer = connect_raw(d.proxy, &format!("{LFS_HOST}:443"));
    assert!(answer.starts_with("HTTP/1.1 403") && answer.contains("127.0.0.2 is denied by policy"), "{answer}");
    // curl sees the refusal as such.
    let got = curl(d.proxy, tmp.path(), &["--cacert", shoal_ca.to_str().unwrap(), &format!("https://{LFS_HOST}/x")]);
    assert!(got.stderr.contains("CONNECT tunnel failed, response 403"), "{}", got.stderr);
    assert_eq!(d.proc.count("CONNECT intercepted"), 0);
}

/// A CONNECT to `target` through `proxy`, by hand: the proxy's whole answer (it closes after a refusal).
fn connect_raw(proxy: SocketAddr, target: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Starts a daemon on `data_dir` with `yaml` that must refuse to start: its error output.
fn refused_start(data_dir: &Path, yaml: &str) -> String {
    std::fs::create_dir_all(data_dir).unwrap();
    let file = data_dir.join("shoal.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = shoal();
    cmd.args(["daemon", "--workers", "1", "--config"]).arg(&file).arg("--data-dir").arg(data_dir);
    for flag in ["--proxy-addr", "--upload-addr", "--metrics-addr"] {
        cmd.args([flag, &free_addr("127.0.0.1").to_string()]);
    }
    let mut p = Proc::spawn("daemon", cmd);
    let status = p.wait_exit(Duration::from_secs(20)).expect("the daemon should refuse to start");
    assert!(!status.success());
    // The exit can come before the log reader has taken the last line: wait for the error line itself.
    p.wait_for("shoal: ", Duration::from_secs(10));
    let log = p.log.lock().unwrap().join("\n");
    assert!(!log.contains("daemon started"), "{log}");
    log
}

#[test]
fn ca_init_writes_a_private_key_and_a_daemon_without_its_ca_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let o = shoal().args(["ca", "init", "--dir"]).arg(&dir).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "update-ca-certificates",
        "/usr/local/share/ca-certificates",
        "GIT_SSL_CAINFO",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "proxy.intercept",
    ] {
        assert!(out.contains(needle), "the instructions lack {needle}:\n{out}");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.join("ca.key")), 0o600);
    let cert = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    assert!(!out.contains("PRIVATE KEY"), "the key is never printed");

    let again = shoal().args(["ca", "init", "--dir"]).arg(&dir).output().unwrap();
    assert!(!again.status.success(), "overwrote without --force");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"), "{again:?}");
    assert_eq!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), cert, "refused: the CA is unchanged");
    let forced = shoal().args(["ca", "init", "--force", "--dir"]).arg(&dir).output().unwrap();
    assert!(forced.status.success(), "{forced:?}");
    assert_ne!(std::fs::read_to_string(dir.join("ca.crt")).unwrap(), cert, "--force: a new CA");
    assert_eq!(mode(&dir.join("ca.key")), 0o600);

    // intercept set, no CA in <data_dir>/ca: no start, and the error names the key.
    let origin_ca = test_ca(&tmp.path().join("origin-ca"), &["x.test"]);
    let log = refused_start(&tmp.path().join("d1"), &intercept_yaml(&["x.test"], None, &origin_ca));
    assert!(log.contains("proxy.intercept_ca") && log.contains("shoal ca init"), "{log}");
    // A CA whose key is garbage, and one whose key others can read.
    let bad = tmp.path().join("bad-ca");
    ca_init(&bad);
    std::fs::write(bad.join("ca.key"), "not a key").unwrap();
    let log = refused_start(&tmp.path().join("d2"), &intercept_yaml(&["x.test"], Some(&bad), &origin_ca));
    assert!(log.contains("proxy.intercept_ca") && log.contains("not a usable private key"), "{log}");
    std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = refused_start(&tmp.path().join("d3"), &intercept_yaml(&["x.test"], Some(&dir), &origin_ca));
    assert!(log.contains("proxy.intercept_ca") && log.contains("chmod 600"), "{log}");
    // A pattern that is not a host, and an upstream bundle that does not exist, name their keys too.
    let log = refused_start(&tmp.path().join("d4"), "proxy:\n  intercept: [\"a/b\"]\n");
    assert!(log.contains("proxy.intercept[0]"), "{log}");
    let log = refused_start(&tmp.path().join("d5"), "upstream:\n  ca_file: /nonexistent/ca.pem\n");
    assert!(log.contains("upstream.ca_file"), "{log}");
}
