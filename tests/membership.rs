//! Cluster membership with real processes on 127.0.0.x: a `shoal scheduler`, seed and peer daemons sharing
//! one cluster secret, and in-process outsiders and rogue members (a wrong secret, a member registering as
//! another host, a member asking a seed to store one URL's bytes under another object's ID).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{self, get, http_get, Daemon, Proc, SECRET};
use common::origin::{Flavour, Origin};
use common::*;
use shoal::membership::{ClusterKey, HandshakeError, HostIdentity};
use shoal::scheduler::{ClientConfig, Decision, HostInfo, SchedulerClient, TaskRequest};
use shoal::storage::TaskId;
use shoal::transfer::{Pool, TransferError};

const RANGES: Flavour = Flavour { ranges: true, content_length: true };

fn key(secret: &str) -> ClusterKey {
    ClusterKey::from_secret(secret.as_bytes()).unwrap()
}

/// An in-process scheduler client holding `secret`, registering as `host_id` with `identity`.
fn member(sched: SocketAddr, secret: &str, host_id: String, identity: Arc<HostIdentity>) -> SchedulerClient {
    let host = HostInfo {
        host_id,
        hostname: "rogue".into(),
        ip: "127.0.0.1".parse().unwrap(),
        upload_port: 1,
        upload_capacity_bytes_per_sec: 1 << 30,
        is_seed: false,
    };
    let cfg = ClientConfig {
        request_timeout: Duration::from_secs(2),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        membership: Some(key(secret)),
        identity: Some(identity),
        ..ClientConfig::default()
    };
    SchedulerClient::with_config(vec![sched.to_string()], host, cfg)
}

/// The host ID a daemon registered with, from the scheduler's log.
fn registered_id(sched: &Proc, ip: &str) -> String {
    let line = sched.wait_for(&format!("ip={ip}"), Duration::from_secs(20));
    let tok = line.split_whitespace().find_map(|t| t.strip_prefix("host=")).unwrap();
    tok.trim_matches('"').to_owned()
}

fn refused(d: &Daemon, listener: &str) -> u64 {
    let (_, text) = http_get(d.metrics, "/metrics");
    let needle = format!("shoal_membership_refused_total{{listener=\"{listener}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&needle)?.trim().parse().ok()).unwrap()
}

/// A daemon of the cluster that already holds `url`'s object.
fn warm_member(dir: &std::path::Path, sched: &cluster::Scheduler, url: &str, oid: &str) -> Daemon {
    let a = cluster::daemon("127.0.0.21", &[sched.addr], false, &dir.join("a"));
    let (ok, err) = get(&a, url, &dir.join("copy-a"), Some(&format!("sha256:{oid}")));
    assert!(ok, "{err}");
    a.proc.wait_for("task complete", Duration::from_secs(20));
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_are_refused_by_schedulers_and_parents_and_members_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.20", RANGES);
    let body = Bytes::from(content(31, 1 << 20));
    let oid = hex::encode(sha256(&body));
    origin.put(&format!("/objects/{oid}"), body.clone());
    let url = origin.url(&format!("/objects/{oid}"));
    let sched = cluster::scheduler("127.0.0.20");
    let a = warm_member(dir.path(), &sched, &url, &oid);

    // A daemon with another cluster's secret: the scheduler refuses it and both sides say so.
    let wrong = dir.path().join("wrong.secret");
    std::fs::write(&wrong, "another-clusters-secret-0123456789abcdef").unwrap();
    let mut cmd = cluster::shoal();
    let [metrics, proxy, upload] = cluster::free_addrs::<3>("127.0.0.22");
    cmd.args(["daemon", "--workers", "1", "--scheduler", &sched.addr.to_string()])
        .args(["--proxy-addr", &proxy.to_string()])
        .args(["--upload-addr", &upload.to_string()])
        .args(["--metrics-addr", &metrics.to_string()])
        .arg("--cluster-secret-file")
        .arg(&wrong)
        .arg("--data-dir")
        .arg(dir.path().join("outsider"));
    let outsider = Proc::spawn("outsider", cmd);
    outsider.wait_for("daemon started", Duration::from_secs(20));
    // It still gets its bytes, from the origin: it only stays out of the swarm.
    let out = dir.path().join("copy-outsider");
    let o = cluster::shoal().args(["get", &url, "--daemon", &proxy.to_string(), "-O"]).arg(&out).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read(&out).unwrap(), body);
    outsider.wait_for("refused by the listener", Duration::from_secs(20));
    sched.proc.wait_for("scheduler connection refused: not a cluster member", Duration::from_secs(20));
    let (_, text) = http_get(metrics, "/metrics");
    assert!(!text.contains("shoal_membership_refused_total{listener=\"scheduler\"} 0\n"), "counted: {text}");

    // The upload port: a pool with the wrong secret is refused, one with the cluster's gets the piece.
    let tid = TaskId(sha256(&body));
    let outsider_pool = Pool::new(shoal::transfer::ClientConfig {
        membership: Some(key("x".repeat(40).as_str())),
        ..Default::default()
    });
    let e = outsider_pool.fetch_bytes(a.upload, tid, 0, body.len() as u32).await.unwrap_err();
    assert!(matches!(e, TransferError::Membership { source: HandshakeError::Refused, .. }), "{e:?}");
    assert!(refused(&a, "upload") >= 1);
    a.proc.wait_for("upload connection refused: not a cluster member", Duration::from_secs(5));
    let pool = Pool::new(shoal::transfer::ClientConfig { membership: Some(key(SECRET)), ..Default::default() });
    let got = pool.fetch_bytes(a.upload, tid, 0, body.len() as u32).await.unwrap();
    assert_eq!(got, body, "a member is served");

    // A dialler that replays the form of a proof without the secret gets "refused" and no frame.
    let mut raw = tokio::net::TcpStream::connect(a.upload).await.unwrap();
    let mut hello = [0u8; 40];
    tokio::io::AsyncReadExt::read_exact(&mut raw, &mut hello).await.unwrap();
    assert_eq!(&hello[..8], b"SHOALMB1");
    let mut forged = b"SHOALMB1".to_vec();
    forged.extend_from_slice(&[1u8; 64]);
    tokio::io::AsyncWriteExt::write_all(&mut raw, &forged).await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut rest));
    assert!(n.await.is_ok_and(|r| r.is_ok_and(|_| rest == [1u8])), "only 'refused', then close: {rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_register_as_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.30", RANGES);
    let body = Bytes::from(content(32, 1 << 20));
    let oid = hex::encode(sha256(&body));
    origin.put(&format!("/objects/{oid}"), body.clone());
    let sched = cluster::scheduler("127.0.0.30");
    let a = warm_member(dir.path(), &sched, &origin.url(&format!("/objects/{oid}")), &oid);
    let victim = registered_id(&sched.proc, "127.0.0.21");

    // It holds the cluster secret, but not the victim's key: its registration is refused ...
    let impostor = member(sched.addr, SECRET, victim.clone(), Arc::new(HostIdentity::generate().unwrap()));
    assert!(impostor.request_task(&request(TaskId(sha256(&body)), "http://x.test/o")).await.is_err());
    sched.proc.wait_for("registration refused", Duration::from_secs(10));
    impostor.shutdown().await;

    // ... and the victim keeps its place: a member asking for the task is sent to it, at its own port.
    let id = Arc::new(HostIdentity::generate().unwrap());
    let c = member(sched.addr, SECRET, id.host_id("c"), id);
    let deadline = Instant::now() + Duration::from_secs(10);
    let parents = loop {
        match c.request_task(&request(TaskId(sha256(&body)), "http://x.test/o")).await.unwrap().decision {
            Decision::Parents(p) => break p,
            other => assert!(Instant::now() < deadline, "never sent to the victim: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((parents[0].host_id.as_str(), parents[0].upload_port), (victim.as_str(), a.upload.port()));
    c.shutdown().await;
}

fn request(task_id: TaskId, url: &str) -> TaskRequest {
    TaskRequest {
        task_id,
        url: url.into(),
        headers: vec![],
        content_length: None,
        piece_length: None,
        private: false,
        credentialed: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_refuses_to_store_one_urls_bytes_under_another_objects_id() {
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.0.40", RANGES);
    origin.put("/good.bin", Bytes::from(content(40, 256 << 10)));
    origin.put("/evil.bin", Bytes::from(content(41, 256 << 10)));
    let sched = cluster::scheduler("127.0.0.40");
    let seed = cluster::daemon("127.0.0.41", &[sched.addr], true, &dir.path().join("seed"));
    registered_id(&sched.proc, "127.0.0.41");
    let filters: Vec<String> = shoal::engine::identity::DEFAULT_FILTERED_PARAMS.iter().map(|s| s.to_string()).collect();
    let good_id =
        shoal::engine::identity::identify(&origin.url("/good.bin").parse().unwrap(), &filters, true).unwrap().task_id;

    // A member asks for good.bin's ID with evil.bin's URL: the seed is triggered and refuses.
    let id = Arc::new(HostIdentity::generate().unwrap());
    let rogue = member(sched.addr, SECRET, id.host_id("rogue"), id);
    let poisoned = request(good_id, &origin.url("/evil.bin"));
    let first = rogue.request_task(&poisoned).await.unwrap().decision;
    assert!(matches!(first, Decision::Wait { .. }), "the seed was triggered: {first:?}");
    seed.proc.wait_for("seed trigger refused", Duration::from_secs(10));
    assert_eq!(origin.requests(), 0, "the seed fetched nothing");
    assert_eq!(cluster::cached_files(&seed.data_dir), 0, "and stored nothing");
    // The scheduler was told: the requester is sent to the origin itself rather than left waiting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rogue.request_task(&poisoned).await.unwrap().decision != Decision::BackToSource {
        assert!(Instant::now() < deadline, "the requester was never sent to the origin");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rogue.shutdown().await;
}

#[test]
fn a_cluster_member_will_not_start_without_the_secret() {
    let o = cluster::shoal().args(["scheduler", "--listen", "127.0.0.1:0"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("cluster secret"), "{o:?}");
    let dir = tempfile::tempdir().unwrap();
    let o = cluster::shoal()
        .args(["daemon", "--scheduler", "127.0.0.1:1", "--proxy-addr", "127.0.0.1:0", "--upload-addr", "127.0.0.1:0"])
        .args(["--metrics-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env_remove("SHOAL_CLUSTER_SECRET_FILE")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("shoal secret generate"), "{o:?}");
    let short = dir.path().join("short");
    std::fs::write(&short, "hunter2\n").unwrap();
    let o = cluster::shoal()
        .args(["scheduler", "--listen", "127.0.0.1:0", "--cluster-secret-file"])
        .arg(&short)
        .output()
        .unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("at least 32"), "{o:?}");
    let o = cluster::shoal().args(["secret", "generate"]).output().unwrap();
    let s = String::from_utf8(o.stdout).unwrap();
    assert!(s.trim().len() == 64 && s.trim().bytes().all(|b| b.is_ascii_hexdigit()), "{s:?}");
}
