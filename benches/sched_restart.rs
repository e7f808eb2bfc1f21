//! Scheduler restart: how long a restarted `shoal scheduler` takes to know again what its peers hold.
//!
//! The scheduler keeps its state in memory only; a restarted one rebuilds it from the peers, which
//! reconnect (src/scheduler/conn.rs: backoff from 100 ms doubling to 5 s) and re-announce every task they
//! announced there (src/scheduler/client.rs). This bench runs the real binary on 127.0.0.1 and, in this
//! process, N simulated hosts, each a real `SchedulerClient` (own TCP connection, cluster-membership proof,
//! identity) holding K of T tasks. It waits until the scheduler's /metrics shows every host, task and
//! (task, peer) pair, then restarts the scheduler two ways:
//!
//! - **graceful**: SIGTERM (the scheduler closes every connection and exits), then a new process on the
//!   same port, as a rolling restart or `systemctl restart` does;
//! - **crash**: SIGKILL, then a new process at once, and again after `--gap-ms` (default 3,000: a pod
//!   rescheduled elsewhere), which shows what the peers' reconnect backoff adds.
//!
//! Reported per case: downtime (old process gone → new one listening), rebuild (listening → /metrics
//! whole again), the scheduler's RSS when whole, and whether a fresh client is then sent to a peer
//! (not the origin) for a task. The first build (all hosts connecting at once to a fresh scheduler) is
//! reported the same way. Both processes share the machine's cores, so the rebuild includes this
//! process's CPU for N clients.
//!
//!   cargo bench --bench sched_restart                        # 1,000 hosts, 1,000 tasks, 10 tasks each
//!   cargo bench --bench sched_restart -- --hosts 2000 --tasks 500 --per-host 20

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal::membership::{ClusterKey, HostIdentity};
use shoal::scheduler::{ClientConfig, Decision, HostInfo, SchedulerClient, TaskProgress, TaskRequest};
use shoal::storage::TaskId;

const SECRET: &str = "sched-restart-bench-cluster-secret-0123456789";
/// How long a restart may take to be whole again before the bench gives up on it.
const REBUILD_BOUND: Duration = Duration::from_secs(120);

struct Args {
    hosts: usize,
    tasks: usize,
    per_host: usize,
    /// The third case's pause between the crash and the new process (a pod rescheduled elsewhere).
    gap: Duration,
}

fn args() -> Args {
    let mut a = Args { hosts: 1_000, tasks: 1_000, per_host: 10, gap: Duration::from_secs(3) };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let n = || v.get(i + 1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{} needs a number", v[i]));
        match v[i].as_str() {
            "--hosts" => a.hosts = n(),
            "--tasks" => a.tasks = n(),
            "--per-host" => a.per_host = n(),
            "--gap-ms" => a.gap = Duration::from_millis(n() as u64),
            _ => {} // cargo bench passes --bench
        }
        i += if v[i].starts_with("--") && v[i] != "--bench" { 2 } else { 1 };
    }
    a
}

/// A `shoal scheduler` process; killed (SIGKILL) when dropped.
struct Sched {
    child: Child,
    metrics: SocketAddr,
}

impl Drop for Sched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts the scheduler on `port` and returns once it logs that it listens (bounded: 20 s).
fn start(port: u16, secret: &std::path::Path) -> Sched {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["scheduler", "--listen", &format!("127.0.0.1:{port}"), "--metrics-addr", &metrics.to_string()])
        .arg("--cluster-secret-file")
        .arg(secret)
        .env("SHOAL_LOG", "warn,shoal::scheduler::server=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the scheduler never said it listens");
        match lines.next() {
            Some(Ok(l)) if l.contains("scheduler listening") => break,
            Some(Ok(_)) => {}
            _ => panic!("the scheduler exited before it listened"),
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
    Sched { child, metrics }
}

/// (hosts, tasks, task_peers) from /metrics; None while it does not answer.
fn gauges(addr: SocketAddr) -> Option<(u64, u64, u64)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let value = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
    };
    Some((value("shoal_scheduler_hosts")?, value("shoal_scheduler_tasks")?, value("shoal_scheduler_task_peers")?))
}

/// Polls /metrics every 10 ms until it shows `want`; the time it took, or None past the bound.
fn until_whole(metrics: SocketAddr, want: (u64, u64, u64)) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < REBUILD_BOUND {
        if gauges(metrics) == Some(want) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("not whole after {REBUILD_BOUND:?}: {:?}, want {want:?}", gauges(metrics));
    None
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn task(n: usize) -> TaskId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(n as u64).to_be_bytes());
    id[31] = 0x5c;
    TaskId(id)
}

fn host_info(i: usize, ident: &HostIdentity) -> HostInfo {
    let name = format!("sim-host-{i}");
    HostInfo {
        host_id: ident.host_id(&name),
        hostname: name,
        ip: format!("127.0.{}.{}", 1 + (i / 250) % 250, 1 + i % 250).parse().unwrap(),
        upload_port: 65002,
        upload_capacity_bytes_per_sec: 125_000_000,
        is_seed: false,
    }
}

/// N hosts, each announcing `per_host` tasks, spread so every task has about the same number of peers:
/// each task's first peer finished it, the others hold 1 to 15 of its 16 pieces.
async fn join_all(a: &Args, port: u16, key: &ClusterKey) -> Vec<SchedulerClient> {
    let mut clients = Vec::with_capacity(a.hosts);
    for i in 0..a.hosts {
        let ident = Arc::new(HostIdentity::generate().unwrap());
        let cfg = ClientConfig { membership: Some(key.clone()), identity: Some(ident.clone()), ..Default::default() };
        let c = SchedulerClient::with_config(vec![format!("127.0.0.1:{port}")], host_info(i, &ident), cfg);
        for k in 0..a.per_host {
            let n = i * a.per_host + k;
            let t = task(n % a.tasks);
            if n < a.tasks {
                // The task's first peer holds it whole (it fetched it from the origin).
                c.task_finished(t, 64 << 20, 4 << 20, Some([7; 32])).await.unwrap_or_else(|e| panic!("host {i}: {e}"));
                continue;
            }
            let p = TaskProgress {
                task_id: t,
                pieces_complete: 1 + (i % 15) as u32,
                piece_count: Some(16),
                content_length: Some(64 << 20),
                piece_length: 4 << 20,
                back_to_source: false,
                credentialed: false,
            };
            c.task_progress(&p).await.unwrap_or_else(|e| panic!("host {i}: {e}"));
        }
        clients.push(c);
    }
    clients
}

/// A host that joins now is sent to a peer for task 0: the rebuilt state is usable, not only counted.
async fn fresh_client_gets_parents(port: u16, key: &ClusterKey, i: usize) -> bool {
    let ident = Arc::new(HostIdentity::generate().unwrap());
    let cfg = ClientConfig { membership: Some(key.clone()), identity: Some(ident.clone()), ..Default::default() };
    let c = SchedulerClient::with_config(vec![format!("127.0.0.1:{port}")], host_info(i, &ident), cfg);
    let req = TaskRequest {
        task_id: task(0),
        url: "http://origin.test/object-0".into(),
        headers: vec![],
        content_length: Some(64 << 20),
        piece_length: Some(4 << 20),
        private: false,
        credentialed: false,
    };
    let d = c.request_task(&req).await.map(|a| a.decision);
    let ok = matches!(d, Ok(Decision::Parents(_)));
    c.leave_task(task(0)).await.ok();
    c.shutdown().await;
    ok
}

fn row(case: &str, down: Option<Duration>, rebuild: Option<Duration>, rss: f64, parents: bool) {
    let ms = |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.0}", d.as_secs_f64() * 1e3));
    let total = down.zip(rebuild).map(|(a, b)| a + b);
    println!(
        "| {case} | {} | {} | {} | {rss:.1} | {} |",
        ms(down),
        ms(rebuild),
        ms(total),
        if parents { "yes" } else { "NO" }
    );
}

/// Stops `old` by `signal`, starts a new scheduler on `port` after `gap` and reports how long each part took.
async fn restart(
    case: &str,
    old: Sched,
    (signal, gap): (&str, Duration),
    port: u16,
    secret: &std::path::Path,
    want: (u64, u64, u64),
) -> Sched {
    let key = ClusterKey::from_secret(SECRET.as_bytes()).unwrap();
    let pid = old.child.id();
    let t0 = Instant::now();
    Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
    let mut old = old;
    let _ = old.child.wait();
    tokio::time::sleep(gap).await;
    let secret = secret.to_owned();
    let new = tokio::task::spawn_blocking(move || start(port, &secret)).await.unwrap();
    let down = t0.elapsed();
    let m = new.metrics;
    let whole = tokio::task::spawn_blocking(move || until_whole(m, want)).await.unwrap();
    let parents = fresh_client_gets_parents(port, &key, 1_000_000).await;
    row(case, Some(down), whole, rss_mib(new.child.id()), parents);
    new
}

fn main() {
    let a = args();
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), SECRET).unwrap();
    let key = ClusterKey::from_secret(SECRET.as_bytes()).unwrap();
    let port = free_port();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let s = start(port, secret_file.path());
        let t0 = Instant::now();
        let clients = join_all(&a, port, &key).await;
        let pairs = (0..a.hosts)
            .flat_map(|i| (0..a.per_host).map(move |k| (i, (i * a.per_host + k) % a.tasks)))
            .collect::<std::collections::HashSet<_>>()
            .len() as u64;
        let want = (a.hosts as u64, a.tasks.min(a.hosts * a.per_host) as u64, pairs);
        let m = s.metrics;
        let first = tokio::task::spawn_blocking(move || until_whole(m, want)).await.unwrap().map(|_| t0.elapsed());
        println!(
            "\nscheduler restart: {} hosts, {} tasks, {} (task, peer) pairs; peers back off 100 ms → 5 s\n",
            a.hosts, want.1, want.2
        );
        println!("| case | downtime ms | rebuild ms | total ms | scheduler RSS MiB | fresh peer sent to a parent |");
        println!("|---|---|---|---|---|---|");
        let parents = fresh_client_gets_parents(port, &key, 1_000_001).await;
        row("first start (all hosts join at once)", None, first, rss_mib(s.child.id()), parents);
        let now = Duration::ZERO;
        let s = restart("graceful (SIGTERM, new process)", s, ("-TERM", now), port, secret_file.path(), want).await;
        let s = restart("crash (SIGKILL, new process)", s, ("-KILL", now), port, secret_file.path(), want).await;
        let case = format!("crash, new process {} ms later", a.gap.as_millis());
        let s = restart(&case, s, ("-KILL", a.gap), port, secret_file.path(), want).await;
        drop(s);
        for c in clients {
            c.shutdown().await;
        }
    });
}
