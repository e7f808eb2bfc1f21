//! Issue 4 end to end with real processes on 127.0.0.x: a scheduler, a seed and peers, each a `shoal`
//! process, fetching from a real HTTP origin (in four flavours) with `shoal get` through each daemon.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::{self, cached_files, get, Daemon};
use common::origin::{Flavour, Origin, FLAVOURS};
use common::*;

const MIB: usize = 1 << 20;

/// An object whose URL path ends in its sha256 (a Git LFS oid), as LFS storage URLs do.
fn object(seed: u64, len: usize) -> (Bytes, String) {
    let b = Bytes::from(content(seed, len));
    let oid = hex::encode(sha256(&b));
    (b, oid)
}

fn file_sha(p: &std::path::Path) -> String {
    hex::encode(sha256(&std::fs::read(p).unwrap()))
}

/// All `peers` run `shoal get` at once; returns each one's wall time.
fn get_all(peers: &[Daemon], url: &str, oid: &str, out: &std::path::Path) -> Vec<Duration> {
    let digest = format!("sha256:{oid}");
    std::thread::scope(|s| {
        let hs: Vec<_> = peers
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (url, digest) = (url.to_owned(), digest.clone());
                let path = out.join(format!("copy{i}"));
                s.spawn(move || {
                    let t0 = Instant::now();
                    let (ok, err) = get(d, &url, &path, Some(&digest));
                    assert!(ok, "peer {i}: shoal get failed: {err}");
                    assert_eq!(file_sha(&path), digest[7..], "peer {i}: wrong bytes");
                    t0.elapsed()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "min {:.2}s median {:.2}s max {:.2}s",
        v[0].as_secs_f64(),
        v[v.len() / 2].as_secs_f64(),
        v[v.len() - 1].as_secs_f64()
    )
}

/// Each peer downloads the object straight from the origin, all at once (the baseline).
fn direct_all(n: usize, url: &str) -> Vec<Duration> {
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async {
                        let t0 = Instant::now();
                        let c = shoal::engine::OriginClient::new(
                            Duration::from_secs(5),
                            Duration::from_secs(30),
                            shoal::upstream::Destinations::standard(),
                        )
                        .unwrap();
                        let r = c.get(url, &[], None).await.unwrap();
                        let _ = r.content_length;
                        let (mut body, mut buf) = (r.into_body(), vec![0u8; 1 << 20]);
                        // Bounded by the body: each read returns bytes of it or ends it.
                        while body.read(&mut buf).await.unwrap() > 0 {}
                        t0.elapsed()
                    })
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn seed_and_six_peers_fetch_one_object_with_one_origin_download_in_every_flavour() {
    let size = 128 * MIB;
    let (obj, oid) = object(60, size);
    for (fi, fl) in FLAVOURS.iter().enumerate() {
        let origin = Origin::start("127.0.0.2", *fl);
        let path = format!("/lfs/objects/{oid}");
        origin.put(&path, obj.clone());
        let tmp = tempfile::tempdir().unwrap();
        let sched = cluster::scheduler("127.0.0.3");
        let seed = cluster::daemon("127.0.0.4", &[sched.addr], true, &tmp.path().join("seed"));
        let peers: Vec<Daemon> = (0..6)
            .map(|i| {
                cluster::daemon(&format!("127.0.0.{}", 10 + i), &[sched.addr], false, &tmp.path().join(format!("p{i}")))
            })
            .collect();
        let times = get_all(&peers, &origin.url(&path), &oid, tmp.path());
        let ratio = origin.bytes_sent() as f64 / size as f64;
        eprintln!("{fl:?}: origin bytes / size = {ratio:.3}; P2P per-peer {}", stats(times.clone()));
        assert!(ratio <= 1.05, "{fl:?}: origin served {ratio:.3}× the object");
        if fi == 0 {
            // One task's log lines can be followed across subsystems: each carries the task's span (and the
            // seed's, on the seed).
            let line = peers[0].proc.wait_for("task complete", Duration::from_secs(10));
            assert!(line.contains(&format!("task{{id={oid} url=")), "{line}");
            let line = seed.proc.wait_for("task complete", Duration::from_secs(10));
            assert!(line.contains(&format!("seed{{task={oid}}}:task{{id={oid} url=")), "{line}");
            // The same peers straight from the origin, in the same run: the baseline for the figures.
            let before = origin.bytes_sent();
            let direct = direct_all(6, &origin.url(&path));
            assert_eq!(origin.bytes_sent() - before, 6 * size as u64);
            eprintln!("{fl:?}: direct per-peer {}", stats(direct));
        }
        drop(seed);
    }
}

#[test]
fn origin_errors_pass_through_and_nothing_is_cached() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let tmp = tempfile::tempdir().unwrap();
    let peer = cluster::daemon("127.0.0.20", &[], false, &tmp.path().join("p"));
    let oid = "ab".repeat(32);
    for code in [404, 500] {
        // The origin's status for an oid-like path: /status/<code>/<oid> is served as that status.
        let url = origin.url(&format!("/status/{code}/{oid}"));
        for attempt in 0..2 {
            let before = origin.requests();
            let (ok, err) = get(&peer, &url, &tmp.path().join("out"), None);
            assert!(!ok, "{code}: must fail");
            assert!(err.contains(&code.to_string()), "{code}: the origin's status reaches the client: {err}");
            assert_eq!(origin.requests(), before + 1, "{code} attempt {attempt}: not cached, asked again");
        }
        assert!(!tmp.path().join("out").exists(), "no partial file");
        assert_eq!(cached_files(&peer.data_dir), 0, "{code}: nothing cached");
    }
}

#[test]
fn scheduler_down_peers_fall_back_to_the_origin() {
    let (obj, oid) = object(61, 8 * MIB);
    let origin = Origin::start("127.0.0.2", FLAVOURS[1]);
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj.clone());
    let tmp = tempfile::tempdir().unwrap();
    let mut sched = cluster::scheduler("127.0.0.3");
    let peers: Vec<Daemon> = (0..2)
        .map(|i| {
            cluster::daemon(&format!("127.0.0.{}", 30 + i), &[sched.addr], false, &tmp.path().join(format!("p{i}")))
        })
        .collect();
    sched.proc.kill();
    let times = get_all(&peers, &origin.url(&path), &oid, tmp.path());
    assert_eq!(times.len(), 2);
    assert!(origin.bytes_sent() >= obj.len() as u64);
}

/// A seed that dies (`SIGKILL`) or freezes (`SIGSTOP`: its sockets stay open, nothing moves) while three
/// peers are taking pieces from it and from each other: every peer still finishes with the right bytes.
/// The frozen case is the hard one: the peers hold each other's first pieces and wait on each other until
/// their round stalls and the scheduler sends one of them to the origin.
fn seed_lost_mid_download(signal: i32, seed_ip: &str, peer_base: u8) {
    let size = 64 * MIB;
    let (obj, oid) = object(62 + u64::from(peer_base), size);
    let origin = Origin::start("127.0.0.2", Flavour { ranges: false, content_length: true });
    // ~2.5 s for the whole object: slow enough to lose the seed while pieces are flowing.
    origin.set_frame_delay(Duration::from_millis(10));
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj.clone());
    let tmp = tempfile::tempdir().unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let seed = cluster::daemon(seed_ip, &[sched.addr], true, &tmp.path().join("seed"));
    let yaml = "engine:\n  parent_stall: 2s\n";
    let peers: Arc<Vec<Daemon>> = Arc::new(
        (0..3)
            .map(|i| {
                let ip = format!("127.0.0.{}", peer_base + i);
                cluster::daemon_with(&ip, &[sched.addr], false, &tmp.path().join(format!("p{i}")), yaml)
            })
            .collect(),
    );
    let (url, dir) = (origin.url(&path), tmp.path().to_owned());
    let p2 = peers.clone();
    let o2 = oid.clone();
    let runner = std::thread::spawn(move || get_all(&p2, &url, &o2, &dir));
    // The origin needs ~2.5 s: at 1 s the seed is mid-download and peers are taking pieces from it.
    std::thread::sleep(Duration::from_millis(1000));
    seed.proc.signal(signal);
    let times = runner.join().expect("every peer finishes with the right bytes");
    eprintln!("after the seed was lost (signal {signal}): {}", stats(times));
    drop(seed);
}

#[test]
fn a_parent_killed_mid_download_does_not_stop_the_others() {
    seed_lost_mid_download(libc::SIGKILL, "127.0.0.4", 40);
}

#[test]
fn a_parent_frozen_mid_download_does_not_stop_the_others() {
    seed_lost_mid_download(libc::SIGSTOP, "127.0.0.6", 44);
}

#[test]
fn two_schedulers_split_tasks_by_hash_and_both_serve() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let tmp = tempfile::tempdir().unwrap();
    let a = cluster::scheduler("127.0.0.3");
    let b = cluster::scheduler("127.0.0.5");
    let both = [a.addr, b.addr];
    let peers: Vec<Daemon> = (0..2)
        .map(|i| cluster::daemon(&format!("127.0.0.{}", 50 + i), &both, false, &tmp.path().join(format!("p{i}"))))
        .collect();
    let mut oids = Vec::new();
    // 20 tasks: the chance that rendezvous hashing puts all of them on one of two schedulers is 2^-19.
    for n in 0..20u64 {
        let (obj, oid) = object(70 + n, MIB / 4);
        origin.put(&format!("/lfs/objects/{oid}"), obj);
        oids.push(oid);
    }
    for oid in &oids {
        get_all(&peers, &origin.url(&format!("/lfs/objects/{oid}")), oid, tmp.path());
    }
    let tasks_of = |p: &cluster::Proc| -> std::collections::HashSet<String> {
        p.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("task request"))
            .filter_map(|l| l.split("task=").nth(1)?.split_whitespace().next().map(str::to_owned))
            .collect()
    };
    let (ta, tb) = (tasks_of(&a.proc), tasks_of(&b.proc));
    assert!(ta.is_disjoint(&tb), "each task lives on exactly one scheduler");
    assert_eq!(ta.len() + tb.len(), oids.len(), "every task was scheduled");
    assert!(!ta.is_empty() && !tb.is_empty(), "both schedulers took tasks: {} and {}", ta.len(), tb.len());
    // Both peers asked the same scheduler for each task, so the second peer got the first as a parent.
    assert!(origin.bytes_sent() < 2 * oids.len() as u64 * (MIB / 4) as u64, "peers shared pieces");
}

#[test]
fn single_node_daemon_with_embedded_scheduler_serves_the_second_get_locally() {
    let (obj, oid) = object(63, 9 * MIB + 7);
    let origin = Origin::start("127.0.0.2", FLAVOURS[3]);
    let path = format!("/lfs/objects/{oid}?jwt=first");
    origin.put(&format!("/lfs/objects/{oid}"), obj.clone());
    let tmp = tempfile::tempdir().unwrap();
    let node = cluster::daemon("127.0.0.60", &[], false, &tmp.path().join("n"));
    let out = tmp.path().join("a");
    let (ok, err) = get(&node, &origin.url(&path), &out, None);
    assert!(ok, "{err}");
    assert!(err.contains("source=origin"), "{err}");
    assert_eq!(file_sha(&out), oid);
    let sent = origin.bytes_sent();
    // Another signed URL for the same object: the same task, a local hit, no origin traffic.
    let (ok, err) = get(&node, &origin.url(&format!("/lfs/objects/{oid}?jwt=second")), &tmp.path().join("b"), None);
    assert!(ok, "{err}");
    assert!(err.contains("source=local"), "{err}");
    assert_eq!(file_sha(&tmp.path().join("b")), oid);
    assert_eq!(origin.bytes_sent(), sent);
    // The counters an operator watches agree with what happened.
    let (status, text) = cluster::http_get(node.metrics, "/metrics");
    assert_eq!(status, 200);
    let size = obj.len() as u64;
    assert_eq!(cluster::metric(&text, "shoal_bytes_from_origin_total"), Some(size), "{text}");
    assert_eq!(cluster::metric(&text, "shoal_tasks_completed_total"), Some(1), "{text}");
    assert_eq!(cluster::metric(&text, "shoal_back_to_source_total"), Some(1), "{text}");
    assert_eq!(cluster::metric(&text, "shoal_tasks_cached"), Some(1), "{text}");
    assert!(cluster::metric(&text, "shoal_storage_bytes").is_some_and(|b| b >= size), "{text}");
    assert!(text.contains("shoal_io_engine{engine="), "{text}");
    assert_eq!(cluster::metric(&text, "shoal_bytes_served_total"), Some(2 * size), "one miss and one hit: {text}");
    assert!(text.contains("shoal_proxy_responses_total{status=\"200\"} 2"), "{text}");
    assert_eq!(cluster::http_get(node.metrics, "/healthz").0, 200);
    assert_eq!(cluster::http_get(node.metrics, "/readyz").0, 200);
    // A wrong expected digest fails and leaves no file.
    let bad = format!("sha256:{}", "00".repeat(32));
    let (ok, err) = get(&node, &origin.url(&path), &tmp.path().join("c"), Some(&bad));
    assert!(!ok && !tmp.path().join("c").exists(), "{err}");
    // A symlink planted where the part file goes is removed, never written through.
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    std::os::unix::fs::symlink(&victim, tmp.path().join("d.shoal-part")).unwrap();
    let (ok, err) = get(&node, &origin.url(&path), &tmp.path().join("d"), None);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert_eq!(file_sha(&tmp.path().join("d")), oid);
    // The data directory and its task files are the daemon's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let data_dir = tmp.path().join("n");
    assert_eq!(mode(&data_dir), 0o700);
    let shard = std::fs::read_dir(data_dir.join("tasks")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(mode(&shard), 0o700);
    for f in std::fs::read_dir(&shard).unwrap() {
        assert_eq!(mode(&f.unwrap().path()), 0o600);
    }
    // /tasks answers on loopback (every client here is); the check that refuses others is unit-tested.
    assert_eq!(cluster::http_get(node.metrics, "/tasks").0, 200);
}

#[test]
fn shoal_get_without_a_daemon_runs_an_embedded_engine_and_copies_from_its_cache() {
    use std::os::unix::fs::MetadataExt;
    let (obj, oid) = object(64, 5 * MIB + 3);
    let origin = Origin::start("127.0.0.2", FLAVOURS[1]);
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj);
    let tmp = tempfile::tempdir().unwrap();
    let nobody = cluster::free_addr("127.0.0.1");
    let run = |out: &str| {
        let o = cluster::shoal()
            .args(["get", &origin.url(&path), "--daemon", &nobody.to_string(), "--data-dir"])
            .arg(tmp.path().join("cache"))
            .arg("-O")
            .arg(tmp.path().join(out))
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    assert!(run("a").contains("source=origin (embedded)"));
    assert!(run("b").contains("source=local (embedded)"));
    assert_eq!(origin.requests(), 1, "the second run came from the cache");
    for f in ["a", "b"] {
        assert_eq!(file_sha(&tmp.path().join(f)), oid);
    }
    // Copies, never hard links to the cached task file: changing an output leaves the cache as it was.
    assert_eq!(std::fs::metadata(tmp.path().join("a")).unwrap().nlink(), 1);
    std::fs::write(tmp.path().join("a"), b"changed by its owner").unwrap();
    assert!(run("c").contains("source=local (embedded)"));
    assert_eq!(file_sha(&tmp.path().join("c")), oid, "the cache did not change with the output");
}

#[test]
fn a_daemon_stopped_with_sigterm_leaves_its_scheduler() {
    let tmp = tempfile::tempdir().unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let d = cluster::daemon("127.0.0.80", &[sched.addr], false, &tmp.path().join("d"));
    // Readiness needs the scheduler, so asking for it connects (clients are otherwise lazy).
    assert_eq!(cluster::http_get(d.metrics, "/readyz").0, 200);
    sched.proc.wait_for("host registered", Duration::from_secs(20));
    d.proc.signal(libc::SIGTERM);
    d.proc.wait_for("storage closed cleanly", Duration::from_secs(20));
    sched.proc.wait_for("host left", Duration::from_secs(20));
}

#[test]
fn peers_join_a_seed_that_is_still_downloading_from_a_slow_origin() {
    let size = 32 * MIB;
    let (obj, oid) = object(65, size);
    let origin = Origin::start("127.0.0.2", FLAVOURS[1]);
    // ~1.3 s for the object: peers wait for the seed for many scheduler rounds before its first pieces.
    origin.set_frame_delay(Duration::from_millis(10));
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj);
    let tmp = tempfile::tempdir().unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let _seed = cluster::daemon("127.0.0.4", &[sched.addr], true, &tmp.path().join("seed"));
    let peers: Vec<Daemon> = (0..3)
        .map(|i| {
            cluster::daemon(&format!("127.0.0.{}", 90 + i), &[sched.addr], false, &tmp.path().join(format!("p{i}")))
        })
        .collect();
    get_all(&peers, &origin.url(&path), &oid, tmp.path());
    let ratio = origin.bytes_sent() as f64 / size as f64;
    assert!(ratio <= 1.05, "peers went to the origin instead of the seed: {ratio:.2}× the object");
    for p in &peers {
        assert!(p.proc.count("source=\"peer\"") == 1, "{} did not get the task from a peer", p.proc.name);
    }
}

/// An origin whose bytes do not match the oid in the URL: the seed verifies what it fetched for a peer and
/// drops it, and the peer's client fails instead of receiving a wrong body.
#[test]
fn a_seed_verifies_the_digest_its_trigger_url_names() {
    let (obj, _) = object(95, 6 * MIB);
    let oid = hex::encode(sha256(b"not these bytes"));
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj);
    let tmp = tempfile::tempdir().unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let seed = cluster::daemon("127.0.0.7", &[sched.addr], true, &tmp.path().join("seed"));
    let peer = cluster::daemon("127.0.0.74", &[sched.addr], false, &tmp.path().join("peer"));
    let out = tmp.path().join("out");
    let (ok, err) = get(&peer, &origin.url(&path), &out, None);
    assert!(!ok, "a body that does not match its oid must fail: {err}");
    assert!(!out.exists());
    seed.proc.wait_for("content digest mismatch", Duration::from_secs(30));
    assert_eq!(seed.proc.count("task complete"), 0);
}

/// A request whose headers carry credentials (Authorization, Cookie) is private: its headers never reach
/// the scheduler or a seed, no seed fetches for it, the requesting node goes to the origin itself, and
/// other members take pieces from that node as usual.
#[test]
fn credentials_in_headers_stay_on_the_requesting_node() {
    let (obj, oid) = object(96, 6 * MIB);
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let path = format!("/lfs/objects/{oid}");
    origin.put(&path, obj);
    let tmp = tempfile::tempdir().unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let seed = cluster::daemon("127.0.0.8", &[sched.addr], true, &tmp.path().join("seed"));
    let peers: Vec<Daemon> = (0..2)
        .map(|i| {
            cluster::daemon(&format!("127.0.0.{}", 75 + i), &[sched.addr], false, &tmp.path().join(format!("p{i}")))
        })
        .collect();
    for (i, p) in peers.iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let o = cluster::shoal()
            .args(["get", &origin.url(&path), "--daemon", &p.proxy.to_string(), "--timeout", "60s"])
            .args(["-H", "Authorization: Bearer only-for-the-origin", "-O"])
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        assert!(err.contains(if i == 0 { "source=origin" } else { "source=peer" }), "peer {i}: {err}");
        assert_eq!(file_sha(&out), oid);
    }
    assert_eq!(origin.body_requests(), 1, "the first peer fetched once; the second took its pieces");
    assert_eq!(origin.heads(), 1, "after the origin agreed that the second requester may read it");
    assert_eq!(seed.proc.count("seed{task="), 0, "no seed was triggered with the requester's credentials");
}

/// A parent that serves wrong bytes with a matching crc32c (a rogue member) cannot make a child accept a
/// task named by its URL: the child holds the peers' bytes to the sha256 that the back-to-source node
/// announced through the scheduler, and its client sees a failed transfer, never a clean wrong body.
#[test]
fn a_rogue_parent_with_matching_crc_cannot_pass_wrong_bytes_for_a_url_named_task() {
    let (obj, _) = object(97, 12 * MIB);
    let want = hex::encode(sha256(&obj));
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    origin.put("/files/model.bin", obj);
    let url = origin.url("/files/model.bin?v=1");
    let tmp = tempfile::tempdir().unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let node = |i: u8| {
        cluster::daemon(&format!("127.0.0.{}", 85 + i), &[sched.addr], false, &tmp.path().join(format!("n{i}")))
    };
    let (a, b, c) = (node(0), node(1), node(2));
    let fetch = |d: &Daemon, name: &str| {
        let out = tmp.path().join(name);
        let (ok, err) = get(d, &url, &out, None);
        (ok, err, out)
    };
    let (ok, err, out) = fetch(&a, "a");
    assert!(ok && err.contains("source=origin"), "{err}");
    assert_eq!(file_sha(&out), want);
    // B takes A's pieces and completes against the digest A announced.
    let (ok, err, out) = fetch(&b, "b");
    assert!(ok && err.contains("source=peer"), "{err}");
    assert_eq!(file_sha(&out), want);
    drop(a);
    // B turns rogue: piece 0 gets other bytes and a crc32c that matches them.
    let shard = std::fs::read_dir(b.data_dir.join("tasks")).unwrap().next().unwrap().unwrap().path();
    let file = |ext: &str| {
        std::fs::read_dir(&shard)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == ext))
            .unwrap()
    };
    let (data, meta) = (file("data"), file("meta"));
    let mut bytes = std::fs::read(&data).unwrap();
    bytes[10] ^= 0xff;
    let piece = 4 * MIB;
    let crc = crc32c::crc32c(&bytes[..piece]);
    std::fs::write(&data, &bytes).unwrap();
    let mut m = std::fs::read(&meta).unwrap();
    m[4096..4104].copy_from_slice(&((1u64 << 32) | u64::from(crc)).to_le_bytes());
    std::fs::write(&meta, &m).unwrap();
    // C can only take pieces from B now.
    let (ok, err, out) = fetch(&c, "c");
    assert!(!ok, "wrong bytes must not be accepted: {err}");
    assert!(!out.exists(), "no file from a failed download");
    c.proc.wait_for("content digest mismatch", Duration::from_secs(10));
    assert_eq!(origin.requests(), 1, "only A went to the origin");
}
