//! The scheduler as it runs: the real `shoal scheduler` binary (and the embedded one) with in-process
//! clients. Everything talks over 127.0.0.1; every wait is bounded; every process is killed by a guard.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use shoal::membership::{ClusterKey, HostIdentity, Role, Session};

use shoal::scheduler::proto::{self, envelope::Msg};
use shoal::scheduler::{
    decode_envelope, encode_envelope, ClientConfig, ClientError, Decision, HostInfo, Parent, Scheduler,
    SchedulerClient, TaskProgress, TaskRequest, MAX_FRAME_LEN,
};
use shoal::storage::TaskId;

/// A `shoal scheduler` process, killed (SIGKILL) when dropped.
struct Sched {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Sched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Starts `shoal scheduler --listen 127.0.0.1:PORT` and waits (at most 20 s) until it says it listens.
fn start(port: u16) -> Sched {
    start_with_metrics(port, "127.0.0.1:0")
}

/// [`start`] with /metrics and /healthz on `metrics`.
fn start_with_metrics(port: u16, metrics: &str) -> Sched {
    start_with_args(port, &["--metrics-addr", metrics])
}

/// [`start`] with more arguments.
fn start_with_args(port: u16, extra: &[&str]) -> Sched {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["scheduler", "--listen", &addr.to_string()])
        .args(extra)
        .arg("--cluster-secret-file")
        .arg(secret_file())
        .env("SHOAL_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let sched = Sched { child, addr };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("scheduler listening") => {
                // Keep draining so the child never blocks on a full pipe.
                std::thread::spawn(move || while rx.recv().is_ok() {});
                return sched;
            }
            Ok(l) => eprintln!("scheduler: {l}"),
            Err(_) => break,
        }
    }
    panic!("scheduler on port {port} never started");
}

const SECRET: &str = "scheduler-tests-cluster-secret-0123456789abcdef";

/// The cluster secret every scheduler and client of these tests shares, in a file for the binary.
fn secret_file() -> &'static std::path::Path {
    static F: OnceLock<tempfile::TempPath> = OnceLock::new();
    F.get_or_init(|| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(SECRET.as_bytes()).unwrap();
        f.into_temp_path()
    })
}

fn key() -> ClusterKey {
    ClusterKey::from_secret(SECRET.as_bytes()).unwrap()
}

/// One identity per host name for the whole test binary, so a name always registers the same host ID.
fn ident(name: &str) -> Arc<HostIdentity> {
    static IDS: OnceLock<Mutex<HashMap<String, Arc<HostIdentity>>>> = OnceLock::new();
    let mut m = IDS.get_or_init(Default::default).lock().unwrap();
    m.entry(name.to_owned()).or_insert_with(|| Arc::new(HostIdentity::generate().unwrap())).clone()
}

/// The host ID the host called `name` registers with.
fn hid(name: &str) -> String {
    ident(name).host_id(name)
}

fn host(id: &str, upload_port: u16, is_seed: bool) -> HostInfo {
    HostInfo {
        host_id: hid(id),
        hostname: id.into(),
        ip: "127.0.0.1".parse().unwrap(),
        upload_port,
        upload_capacity_bytes_per_sec: 1 << 30,
        is_seed,
    }
}

fn fast() -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_millis(500),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ClientConfig::default()
    }
}

fn client(addrs: &[SocketAddr], id: &str, upload_port: u16) -> SchedulerClient {
    let addrs = addrs.iter().map(SocketAddr::to_string).collect();
    SchedulerClient::with_config(addrs, host(id, upload_port, false), member(id, fast()))
}

/// `cfg` as a member of the tests' cluster, registering as `name`.
fn member(name: &str, cfg: ClientConfig) -> ClientConfig {
    ClientConfig { membership: Some(key()), identity: Some(ident(name)), ..cfg }
}

fn embedded() -> (SocketAddr, shoal::scheduler::SchedulerHandle) {
    Scheduler::spawn_embedded(Some(key())).unwrap()
}

fn tid(n: u8) -> TaskId {
    TaskId([n; 32])
}

fn req(t: TaskId) -> TaskRequest {
    TaskRequest {
        task_id: t,
        url: format!("https://origin.test/obj/{t}?X-Amz-Signature=abc"),
        headers: vec![("X-Client".into(), "c1".into()), ("Range".into(), "bytes=0-".into())],
        content_length: Some(64 << 20),
        piece_length: Some(4 << 20),
        private: false,
        credentialed: false,
    }
}

fn prog(t: TaskId, pieces: u32) -> TaskProgress {
    TaskProgress {
        task_id: t,
        pieces_complete: pieces,
        piece_count: Some(16),
        content_length: Some(64 << 20),
        piece_length: 4 << 20,
        back_to_source: false,
        credentialed: false,
    }
}

/// Asks until the answer is a parent list (progress reports are one-way, so they land a moment later).
async fn parents(c: &SchedulerClient, t: TaskId) -> Vec<Parent> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let d = c.request_task(&req(t)).await.map(|a| a.decision);
        match d {
            Ok(Decision::Parents(p)) if !p.is_empty() => return p,
            Ok(Decision::Wait { .. }) | Err(ClientError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("{} expected parents for {t:?}, got {other:?}", c.host().host_id),
        }
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn binary_returns_parents_and_stops_on_sigterm() {
    let mut s = start(free_port());
    let a = client(&[s.addr], "a", 4001);
    let b = client(&[s.addr], "b", 4002);
    assert_eq!(a.request_task(&req(tid(1))).await.unwrap().decision, Decision::BackToSource);
    assert!(matches!(b.request_task(&req(tid(1))).await.unwrap().decision, Decision::Wait { .. }), "one origin fetch");
    a.task_progress(&prog(tid(1), 1)).await.unwrap();
    let p = parents(&b, tid(1)).await;
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].host_id.as_str(), p[0].addr()), (hid("a").as_str(), "127.0.0.1:4001".parse().unwrap()));
    assert_eq!(b.request_task(&req(tid(2))).await.unwrap().decision, Decision::BackToSource, "tasks are independent");

    // Ranking uses reported load; a parent reported bad is never offered to that child again.
    let c = client(&[s.addr], "c", 4003);
    c.task_progress(&prog(tid(1), 1)).await.unwrap();
    a.report_load(shoal::scheduler::PeerLoad { upload_bytes_per_sec: 1 << 29, upload_connections: 9 }).await.unwrap();
    let d = client(&[s.addr], "d", 4004);
    let deadline = Instant::now() + Duration::from_secs(5);
    while parents(&d, tid(1)).await.iter().map(|p| p.host_id.clone()).collect::<Vec<_>>() != [hid("c"), hid("a")] {
        assert!(Instant::now() < deadline, "the busier parent never ranked second");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.report_bad_parent(tid(1), &hid("c"), "crc mismatch").await.unwrap();
    while parents(&d, tid(1)).await.iter().any(|p| p.host_id == hid("c")) {
        assert!(Instant::now() < deadline, "the bad parent was offered again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // SAFETY: kill(2) on a child we spawned, with a valid signal.
    assert_eq!(unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "scheduler ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn restarted_scheduler_is_rebuilt_from_re_announcements() {
    let port = free_port();
    let s = start(port);
    let addr = s.addr;
    let a = client(&[addr], "a", 4001);
    let b = client(&[addr], "b", 4002);
    assert_eq!(a.request_task(&req(tid(1))).await.unwrap().decision, Decision::BackToSource);
    a.task_progress(&prog(tid(1), 2)).await.unwrap();
    b.task_finished(tid(3), 64 << 20, 4 << 20, None).await.unwrap();
    assert_eq!(parents(&b, tid(1)).await[0].host_id, hid("a"));

    drop(s); // SIGKILL: all state is gone
    let c = client(&[addr], "c", 4003);
    let t0 = Instant::now();
    let e = c.request_task(&req(tid(1))).await.unwrap_err();
    assert!(matches!(e, ClientError::Unavailable { .. }), "{e:?}");
    assert!(t0.elapsed() < Duration::from_millis(500), "a down scheduler must fail fast: {:?}", t0.elapsed());

    let _s = start(port);
    until("a and b to reconnect", || a.is_connected(addr) && b.is_connected(addr)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let d = client(&[addr], "d", 4004);
    let p = parents(&d, tid(1)).await;
    assert_eq!(p.iter().map(|p| p.host_id.clone()).collect::<Vec<_>>(), [hid("a")], "a re-announced its 2 pieces");
    let p = parents(&d, tid(3)).await;
    assert!(p[0].finished && p[0].host_id == hid("b"), "b re-announced its finished task: {p:?}");
    let fresh = client(&[addr], "e", 4005);
    assert!(
        matches!(fresh.request_task(&req(tid(1))).await.unwrap().decision, Decision::Parents(_)),
        "a is still the task's origin fetcher, so nobody else is sent to the origin"
    );
}

#[tokio::test]
async fn two_schedulers_split_tasks_by_rendezvous_hash() {
    let (s1, s2) = (start(free_port()), start(free_port()));
    let c1 = client(&[s1.addr, s2.addr], "c1", 4001);
    let c2 = client(&[s2.addr, s1.addr], "c2", 4002);
    let p1 = client(&[s1.addr], "probe1", 4003);
    let p2 = client(&[s2.addr], "probe2", 4004);
    let tasks: Vec<TaskId> = (0..16).map(tid).collect();
    let mut owners = Vec::new();
    for &t in &tasks {
        let (o1, o2) = (c1.scheduler_for(&t).await.unwrap(), c2.scheduler_for(&t).await.unwrap());
        assert_eq!(o1, o2, "every client sends a task to the same scheduler");
        owners.push(o1);
        assert_eq!(c1.request_task(&req(t)).await.unwrap().decision, Decision::BackToSource);
        c1.task_progress(&prog(t, 1)).await.unwrap();
    }
    let on1 = owners.iter().filter(|&&o| o == s1.addr).count();
    assert!(on1 > 0 && on1 < tasks.len(), "both schedulers own tasks ({on1} of {} on the first)", tasks.len());
    for (&t, &owner) in tasks.iter().zip(&owners) {
        assert_eq!(parents(&c2, t).await[0].host_id, hid("c1"));
        let (mine, other) = if owner == s1.addr { (&p1, &p2) } else { (&p2, &p1) };
        assert_eq!(parents(mine, t).await[0].host_id, hid("c1"), "the owner knows the task");
        assert_eq!(
            other.request_task(&req(t)).await.unwrap().decision,
            Decision::BackToSource,
            "the other never saw it"
        );
    }
}

/// Writes one raw frame (length prefix included) and returns the stream.
/// A blocking connection that passed the membership handshake, and its session.
async fn raw_conn(addr: SocketAddr) -> (TcpStream, Session) {
    let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
    let session = shoal::membership::connect(&mut t, &key(), Role::Scheduler, Duration::from_secs(5)).await.unwrap();
    let s = t.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (s, session)
}

fn send(s: &mut TcpStream, frames: &[&[u8]]) {
    for f in frames {
        s.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
        s.write_all(f).unwrap();
    }
}

async fn raw(addr: SocketAddr, frames: &[&[u8]]) -> TcpStream {
    let (mut s, _) = raw_conn(addr).await;
    send(&mut s, frames);
    s
}

fn read_msg(s: &mut TcpStream) -> Option<Msg> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).ok()?;
    decode_envelope(&body).unwrap()
}

fn expect_error_then_close(mut s: TcpStream, what: &str) {
    match read_msg(&mut s) {
        Some(Msg::Error(e)) => assert!(e.fatal, "{what}: {e:?}"),
        other => panic!("{what}: expected an error, got {other:?}"),
    }
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap_or(0), 0, "{what}: the connection is closed");
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_only_that_connection() {
    let s = start(free_port());
    let a = client(&[s.addr], "a", 4001);
    assert_eq!(a.request_task(&req(tid(1))).await.unwrap().decision, Decision::BackToSource);
    a.task_progress(&prog(tid(1), 1)).await.unwrap();
    let b = client(&[s.addr], "b", 4002);
    assert_eq!(parents(&b, tid(1)).await[0].host_id, hid("a"));

    // Oversized: refused from the length prefix alone.
    let mut big = raw(s.addr, &[]).await;
    big.write_all(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes()).unwrap();
    big.write_all(&[1; 64]).unwrap();
    expect_error_then_close(big, "oversized");
    expect_error_then_close(raw(s.addr, &[&[9, 0, 0]]).await, "unknown version");
    expect_error_then_close(raw(s.addr, &[&[1, 0x0a, 0xff, 0xff, 0xff]]).await, "undecodable protobuf");
    expect_error_then_close(raw(s.addr, &[&[]]).await, "empty frame");
    let early = encode_envelope(Msg::RequestTask(req(tid(1)).to_proto(5)));
    expect_error_then_close(raw(s.addr, &[&early]).await, "request before register");

    // Invalid fields are refused without closing; the connection goes on.
    let (mut r, session) = raw_conn(s.addr).await;
    let mut reg = host("raw", 4009, false).to_proto();
    reg.identity_key = ident("raw").public_key();
    reg.identity_proof = ident("raw").prove(&session, &reg.host_id);
    let reg = encode_envelope(Msg::Register(reg));
    let mut bad = req(tid(1)).to_proto(7);
    bad.task_id.pop();
    let bad = encode_envelope(Msg::RequestTask(bad));
    let good = encode_envelope(Msg::RequestTask(req(tid(1)).to_proto(8)));
    send(&mut r, &[&reg, &bad, &good]);
    match read_msg(&mut r) {
        Some(Msg::Error(e)) => assert!(!e.fatal && e.req_id == 7, "{e:?}"),
        other => panic!("expected a refusal of request 7, got {other:?}"),
    }
    match read_msg(&mut r) {
        Some(Msg::RequestTaskReply(rep)) => {
            assert_eq!(rep.req_id, 8);
            let Some(proto::request_task_reply::Decision::Parents(p)) = rep.decision else { panic!("{rep:?}") };
            assert_eq!(p.parents[0].host_id, hid("a"));
        }
        other => panic!("expected the reply to request 8, got {other:?}"),
    }

    // Everyone else is untouched.
    assert!(a.is_connected(s.addr));
    assert_eq!(parents(&b, tid(1)).await[0].host_id, hid("a"));
}

#[tokio::test]
async fn unreachable_or_silent_scheduler_fails_fast_with_typed_errors() {
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let c = client(&[nobody], "a", 4001);
    for _ in 0..3 {
        let t0 = Instant::now();
        let e = c.request_task(&req(tid(1))).await.unwrap_err();
        assert!(matches!(e, ClientError::Unavailable { addr, .. } if addr == nobody), "{e:?}");
        assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    }
    let none = SchedulerClient::with_config(vec![], host("x", 1, false), fast());
    assert!(matches!(none.request_task(&req(tid(1))).await, Err(ClientError::NoSchedulers)));
    let bad = SchedulerClient::with_config(vec!["no-port-here".into()], host("x", 1, false), fast());
    assert!(matches!(bad.request_task(&req(tid(1))).await, Err(ClientError::Resolve { .. })));

    // Accepts, reads, never answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = l.local_addr().unwrap();
    let sink = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        while tokio::io::AsyncReadExt::read(&mut s, &mut buf).await.is_ok_and(|n| n > 0) {}
    });
    let mut cfg = fast();
    cfg.request_timeout = Duration::from_millis(300);
    let c = SchedulerClient::with_config(vec![silent.to_string()], host("a", 1, false), member("a", cfg));
    let e = c.request_task(&req(tid(1))).await.unwrap_err();
    assert!(matches!(e, ClientError::Timeout { addr, .. } if addr == silent), "{e:?}");
    sink.abort();
}

#[tokio::test]
async fn embedded_scheduler_triggers_a_seed_with_the_requesters_url_and_headers() {
    let (addr, h) = embedded();
    let seed = SchedulerClient::with_config(vec![addr.to_string()], host("seed", 4100, true), member("seed", fast()));
    let mut triggers = seed.seed_triggers().expect("first call");
    assert!(seed.seed_triggers().is_none());
    until("the seed to register", || h.host_count() == 1).await;

    let p = client(&[addr], "p", 4001);
    let r = req(tid(1));
    assert!(matches!(p.request_task(&r).await.unwrap().decision, Decision::Wait { .. }), "the seed fetches, p waits");
    let t = tokio::time::timeout(Duration::from_secs(5), triggers.recv()).await.unwrap().unwrap();
    assert_eq!((t.task_id, &t.url, &t.headers), (r.task_id, &r.url, &r.headers));
    assert_eq!((t.content_length, t.piece_length), (r.content_length, r.piece_length));
    assert_eq!(h.task_summary(&tid(1)).unwrap().source.as_deref(), Some(hid("seed").as_str()));

    seed.task_progress(&prog(tid(1), 1)).await.unwrap();
    let ps = parents(&p, tid(1)).await;
    assert!(ps[0].host_id == hid("seed") && ps[0].is_seed && ps[0].upload_port == 4100, "{ps:?}");

    // The seed goes away: its pieces with it, and the next requester fetches from the origin itself.
    seed.shutdown().await;
    until("the seed to leave", || h.host_count() == 1).await;
    assert_eq!(p.request_task(&r).await.unwrap().decision, Decision::BackToSource);
    assert_eq!(h.task_summary(&tid(1)).unwrap().source.as_deref(), Some(hid("p").as_str()));
    h.shutdown().await;
    until("p to notice", || !p.is_connected(addr)).await;
}

#[tokio::test]
async fn tasks_move_to_their_new_owner_when_the_scheduler_set_changes() {
    let (a1, h1) = embedded();
    let (a2, h2) = embedded();
    let c = client(&[a1], "c", 4001);
    let tasks: Vec<TaskId> = (0..16).map(tid).collect();
    for &t in &tasks {
        assert_eq!(c.request_task(&req(t)).await.unwrap().decision, Decision::BackToSource);
        c.task_progress(&prog(t, 3)).await.unwrap();
    }
    until("every task on the only scheduler", || h1.task_ids().len() == tasks.len()).await;

    assert_eq!(c.set_schedulers(vec![a2.to_string(), a1.to_string()]).await.unwrap().len(), 2);
    let mut on2 = Vec::new();
    for &t in &tasks {
        if c.scheduler_for(&t).await.unwrap() == a2 {
            on2.push(t);
        }
    }
    assert!(!on2.is_empty() && on2.len() < tasks.len(), "{} of {} move", on2.len(), tasks.len());
    until("the moved tasks to reach their new owner", || h2.task_ids().len() == on2.len()).await;
    until("and to leave the old one", || h1.task_ids().len() == tasks.len() - on2.len()).await;
    for t in &on2 {
        let s = h2.task_summary(t).unwrap();
        assert_eq!(s.source.as_deref(), Some(hid("c").as_str()), "moved with its origin-fetcher flag");
    }
    h1.shutdown().await;
    h2.shutdown().await;
}

/// The engine runs on thread-per-core runtimes and hands work between cores, so every client future must be
/// Send (no lock held across an await).
#[test]
fn client_futures_are_send() {
    fn send<T: Send>(_: T) {}
    let c = SchedulerClient::new(vec!["127.0.0.1:1".into()], host("x", 1, false));
    let r = req(tid(1));
    send(c.request_task(&r));
    send(c.task_progress(&prog(tid(1), 1)));
    send(c.task_finished(tid(1), 1, 1, None));
    send(c.task_failed(tid(1), "x"));
    send(c.leave_task(tid(1)));
    send(c.report_bad_parent(tid(1), "p", "x"));
    send(c.report_load(shoal::scheduler::PeerLoad::default()));
    send(c.connect_all());
    send(c.set_schedulers(vec![]));
    send(c.shutdown());
    send(c.clone());
}

/// How a daemon runs it: the embedded scheduler on one core's runtime, clients on others.
#[test]
fn embedded_scheduler_on_one_core_serves_clients_on_another() {
    let cores = shoal::runtime::Cores::start(2, "sched-test").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (addr, handle) =
        rt.block_on(cores.spawn_on(0, async { Scheduler::spawn_embedded(Some(key())) })).unwrap().unwrap();
    let got = rt.block_on(cores.spawn_on(1, async move {
        let a = client(&[addr], "a", 4001);
        let b = client(&[addr], "b", 4002);
        assert_eq!(a.request_task(&req(tid(1))).await.unwrap().decision, Decision::BackToSource);
        a.task_progress(&prog(tid(1), 1)).await.unwrap();
        let p = parents(&b, tid(1)).await;
        a.shutdown().await;
        b.shutdown().await;
        p
    }));
    assert_eq!(got.unwrap()[0].host_id, hid("a"));
    drop(handle);
    cores.shutdown();
}

/// A host that floods the scheduler is slowed to its frame budget (the reply waits behind the budget),
/// while its connection stays open and its requests are still answered.
#[tokio::test]
async fn a_flooding_host_is_held_to_its_frame_budget() {
    let cfg = shoal::scheduler::ServerConfig { max_frames_per_sec: 20, membership: Some(key()), ..Default::default() };
    let h = Scheduler::spawn("127.0.0.1:0".parse().unwrap(), cfg).unwrap();
    let (mut r, session) = raw_conn(h.local_addr()).await;
    let mut reg = host("flood", 4010, false).to_proto();
    reg.identity_key = ident("flood").public_key();
    reg.identity_proof = ident("flood").prove(&session, &reg.host_id);
    let reg = encode_envelope(Msg::Register(reg));
    let ping = encode_envelope(Msg::Ping(proto::Ping {}));
    let ask = encode_envelope(Msg::RequestTask(req(tid(1)).to_proto(9)));
    let mut frames: Vec<&[u8]> = vec![&reg];
    frames.extend(std::iter::repeat_n(ping.as_ref(), 59));
    frames.push(&ask);
    let t0 = Instant::now();
    send(&mut r, &frames);
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reply = tokio::task::spawn_blocking(move || read_msg(&mut r)).await.unwrap();
    assert!(matches!(reply, Some(Msg::RequestTaskReply(ref rep)) if rep.req_id == 9), "{reply:?}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "61 frames at 20/s take 3 windows: {:?}", t0.elapsed());
    h.shutdown().await;
}

/// GET `path` on `addr`: (status line, body).
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.lines().next().unwrap_or("").to_owned(), body.to_owned())
}

/// An operator sees hosts, tasks, decisions and their latency at /metrics, and /healthz answers.
#[tokio::test]
async fn metrics_count_hosts_tasks_and_decisions() {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let s = start_with_metrics(free_port(), &metrics.to_string());
    let a = client(&[s.addr], "a", 4001);
    let b = client(&[s.addr], "b", 4002);
    assert_eq!(a.request_task(&req(tid(1))).await.unwrap().decision, Decision::BackToSource);
    assert!(matches!(b.request_task(&req(tid(1))).await.unwrap().decision, Decision::Wait { .. }));
    a.task_progress(&prog(tid(1), 1)).await.unwrap();
    parents(&b, tid(1)).await;
    let (status, body) = http_get(metrics, "/healthz");
    assert!(status.contains(" 200 ") && body == "ok\n", "{status} {body:?}");
    let (status, text) = http_get(metrics, "/metrics");
    assert!(status.contains(" 200 "), "{status}");
    for line in [
        "shoal_scheduler_hosts 2",
        "shoal_scheduler_tasks 1",
        "shoal_scheduler_task_peers 2",
        "shoal_scheduler_connections 2",
        "shoal_scheduler_decisions_total{decision=\"back_to_source\"} 1",
        "shoal_scheduler_decisions_total{decision=\"parents\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    // b may have been told to wait more than once (a's progress travels on another connection).
    let value = |name: &str| -> u64 {
        let l = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let waits = value("shoal_scheduler_decisions_total{decision=\"wait\"}");
    assert!(waits >= 1);
    assert_eq!(value("shoal_scheduler_decision_seconds_count"), 2 + waits);
    assert_eq!(value("shoal_scheduler_decision_seconds_bucket{le=\"+Inf\"}"), 2 + waits);
    assert!(!text.contains("127.0.0.1") && !text.contains(&hid("a")), "no address or host name leaves: {text}");
    assert!(http_get(metrics, "/tasks").0.contains(" 404 "));
}

/// `scheduler.fan_out` in the config file bounds how many children one parent feeds: with 1, the second
/// child is not given the parent the first one already takes from.
#[tokio::test]
async fn the_configured_fan_out_bounds_a_parents_children() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("shoal.yaml");
    std::fs::write(&cfg, "scheduler:\n  fan_out: 1\n").unwrap();
    let s = start_with_args(free_port(), &["--metrics-addr", "127.0.0.1:0", "--config", cfg.to_str().unwrap()]);
    let a = client(&[s.addr], "a", 4001);
    let b = client(&[s.addr], "b", 4002);
    let c = client(&[s.addr], "c", 4003);
    assert_eq!(a.request_task(&req(tid(9))).await.unwrap().decision, Decision::BackToSource);
    a.task_progress(&prog(tid(9), 2)).await.unwrap();
    assert_eq!(parents(&b, tid(9)).await[0].host_id, hid("a"));
    let d = c.request_task(&req(tid(9))).await.unwrap().decision;
    assert!(matches!(d, Decision::Wait { .. }), "a feeds b already; fan_out 1 leaves nothing for c: {d:?}");
}
