//! 1 GiB parent → child over loopback through Shoal's data plane (upload server with sendfile, pool
//! verifying crc32c and writing into the child's store), beside the baseline of raw sendfile of the same
//! file to a reader that discards, measured in the same run.
//!
//! Each side runs on its own thread, and CPU is read from that thread's CPU clock, so "parent CPU/GiB"
//! compares our upload thread with a bare sendfile loop. Process CPU (all threads, io_uring workers
//! included) is reported too. The rate counts until the child has stored every piece; the child store's
//! own finishing work (sha256 of the whole content, fdatasync) is awaited before the next run and
//! reported separately. Set SHOAL_BENCH_DIR to put both stores elsewhere (default: the temp dir).

use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use shoal::storage::{Store, StoreConfig, Task, TaskId, TaskSpec};
use shoal::transfer::{ClientConfig, Pool, ServerConfig, UploadServer};

const LEN: u64 = 1 << 30;
const PIECE: u32 = 4 << 20;
const GIB: f64 = (1u64 << 30) as f64;

fn cpu_of(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; a bad clock id only makes the call fail.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The CPU clock of another thread of this process.
fn thread_clock(t: libc::pthread_t) -> libc::clockid_t {
    let mut c: libc::clockid_t = 0;
    // SAFETY: `t` is a live thread of this process (its JoinHandle is held); `c` is a valid out-pointer.
    unsafe { libc::pthread_getcpuclockid(t, &mut c) };
    c
}

fn process_cpu() -> Duration {
    cpu_of(libc::CLOCK_PROCESS_CPUTIME_ID)
}

#[derive(Default, Clone, Copy)]
struct Run {
    wall: Duration,
    parent_cpu: Duration,
    child_cpu: Duration,
    process_cpu: Duration,
}

#[derive(Default)]
struct Totals {
    runs: Vec<Run>,
}

/// Our data plane: a parent thread serving, a child thread downloading into its own store.
struct Shoal {
    parent_clock: libc::clockid_t,
    child_clock: libc::clockid_t,
    jobs: mpsc::Sender<(bool, mpsc::Sender<Duration>)>,
    server: UploadServer,
    /// Time from request to the child task being complete (sha256 checked, fdatasync'ed) per stored run.
    complete: Mutex<Vec<Duration>>,
    _threads: Vec<std::thread::JoinHandle<()>>,
}

fn spec(id: TaskId) -> TaskSpec {
    TaskSpec {
        id,
        url: "http://origin.test/bench".into(),
        content_length: Some(LEN),
        piece_length: Some(PIECE),
        expected_sha256: None,
        digest_announced: false,
        credentialed: false,
    }
}

/// SHOAL_BENCH_ENGINE=sync|uring|auto picks the storage io engine of both stores.
fn store_config(dir: &std::path::Path) -> StoreConfig {
    let mut cfg = StoreConfig::new(dir);
    if let Some(e) = std::env::var("SHOAL_BENCH_ENGINE").ok().and_then(|e| e.parse().ok()) {
        cfg.io_engine = e;
    }
    cfg
}

fn base_dir() -> std::path::PathBuf {
    std::env::var_os("SHOAL_BENCH_DIR").map(Into::into).unwrap_or_else(std::env::temp_dir)
}

fn fill_parent(store: &Arc<Store>) -> Arc<Task> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let (task, _) = store.get_or_create(&spec(TaskId([0xb0; 32]))).expect("parent task");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for k in 0..task.piece_count().unwrap_or(0) {
            let mut v = Vec::with_capacity(PIECE as usize);
            while v.len() < PIECE as usize {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.extend_from_slice(&x.to_le_bytes());
            }
            task.write_piece(k, v.into(), None).await.expect("parent piece");
        }
        task
    })
}

impl Shoal {
    fn start(parent: Arc<Store>, child: Arc<Store>) -> (Shoal, SocketAddr) {
        let server = UploadServer::new(parent, ServerConfig::default());
        let (addr_tx, addr_rx) = mpsc::channel();
        let s = server.clone();
        let pt = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.2:0").await.expect("bind");
                let _ = addr_tx.send(l.local_addr().expect("addr"));
                let _ = s.serve(l).await;
            });
        });
        let addr = addr_rx.recv().expect("server address");
        let (jobs, job_rx) = mpsc::channel::<(bool, mpsc::Sender<Duration>)>();
        let ct = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let pool = Pool::new(ClientConfig {
                bind_ip: Some("127.0.0.3".parse().expect("ip")),
                pieces_in_flight: 8,
                ..ClientConfig::default()
            });
            let id = TaskId([0xb0; 32]);
            // One job per iteration until the sender is dropped.
            while let Ok((store, reply)) = job_rx.recv() {
                if !store {
                    let t0 = Instant::now();
                    rt.block_on(network_only(&pool, addr, id));
                    let _ = reply.send(t0.elapsed());
                    continue;
                }
                child.remove(&id, "bench iteration");
                let (task, _) = child.get_or_create(&spec(id)).expect("child task");
                let t0 = Instant::now();
                let stored = rt.block_on(async {
                    pool.download(addr, &task).await.expect("download");
                    let stored = t0.elapsed();
                    // The store's own finishing work (sha256 of the content, fdatasync) runs after the last
                    // piece; waiting for it keeps one iteration's disk and hashing work out of the next.
                    task.wait_complete().await.expect("child task completes");
                    stored
                });
                let _ = reply.send(stored);
            }
            child.remove(&id, "bench end");
        });
        let shoal = Shoal {
            parent_clock: thread_clock(pt.as_pthread_t()),
            child_clock: thread_clock(ct.as_pthread_t()),
            jobs,
            server,
            complete: Mutex::new(Vec::new()),
            _threads: vec![pt, ct],
        };
        (shoal, addr)
    }

    /// One 1 GiB transfer; `store` false fetches and verifies the pieces but drops them (no storage).
    fn once(&self, store: bool) -> Run {
        let (p0, c0, a0) = (cpu_of(self.parent_clock), cpu_of(self.child_clock), process_cpu());
        let (tx, rx) = mpsc::channel();
        let _ = self.jobs.send((store, tx));
        let t0 = Instant::now();
        let wall = rx.recv().expect("child thread alive");
        if store {
            let done = t0.elapsed();
            self.complete.lock().map(|mut v| v.push(done)).ok();
        }
        Run {
            wall,
            parent_cpu: cpu_of(self.parent_clock) - p0,
            child_cpu: cpu_of(self.child_clock) - c0,
            process_cpu: process_cpu() - a0,
        }
    }
}

/// The data plane alone: the same pipelined, crc-checked fetches, with the bytes dropped instead of stored.
async fn network_only(pool: &Arc<Pool>, addr: SocketAddr, id: TaskId) {
    let n = (LEN / PIECE as u64) as u32;
    let mut set = tokio::task::JoinSet::new();
    let mut next = 0u32;
    // Bounded by n pieces.
    while next < n || !set.is_empty() {
        while next < n && set.len() < 8 {
            let pool = pool.clone();
            let k = next;
            set.spawn(async move { pool.fetch_bytes(addr, id, k, PIECE).await.map(|b| b.len()) });
            next += 1;
        }
        if let Some(r) = set.join_next().await {
            r.expect("fetch task").expect("fetch");
        }
    }
}

/// The baseline: sendfile of the parent's content file to a reader on another thread that discards.
fn raw_once(path: &std::path::Path) -> Run {
    let l = StdListener::bind("127.0.0.2:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let file = std::fs::File::open(path).expect("content file");
    let a0 = process_cpu();
    let sender = std::thread::spawn(move || {
        let c0 = cpu_of(libc::CLOCK_THREAD_CPUTIME_ID);
        let (sock, _) = l.accept().expect("accept");
        let mut off: libc::off_t = 0;
        // Bounded: each call moves bytes or the loop stops.
        while (off as u64) < LEN {
            let want = (LEN - off as u64) as usize;
            // SAFETY: both descriptors are open for the call; `off` is a valid local the kernel updates.
            let n = unsafe { libc::sendfile(sock.as_raw_fd(), file.as_raw_fd(), &mut off, want) };
            if n <= 0 {
                break;
            }
        }
        cpu_of(libc::CLOCK_THREAD_CPUTIME_ID) - c0
    });
    let receiver = std::thread::spawn(move || {
        let c0 = cpu_of(libc::CLOCK_THREAD_CPUTIME_ID);
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        s.bind(&"127.0.0.3:0".parse::<SocketAddr>().expect("ip").into()).expect("bind child");
        let t0 = Instant::now();
        s.connect(&addr.into()).expect("connect");
        let mut sock: StdStream = s.into();
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while let Ok(n) = sock.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n as u64;
        }
        assert_eq!(got, LEN, "raw transfer incomplete");
        (t0.elapsed(), cpu_of(libc::CLOCK_THREAD_CPUTIME_ID) - c0)
    });
    let parent_cpu = sender.join().expect("sender");
    let (wall, child_cpu) = receiver.join().expect("receiver");
    Run { wall, parent_cpu, child_cpu, process_cpu: process_cpu() - a0 }
}

fn per_gib(d: Duration) -> f64 {
    d.as_secs_f64() * GIB / LEN as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn describe(name: &str, t: &Totals) -> (f64, f64, f64, f64) {
    let rate = median(t.runs.iter().map(|r| LEN as f64 / r.wall.as_secs_f64() / 1e9).collect());
    let p = median(t.runs.iter().map(|r| per_gib(r.parent_cpu)).collect());
    let c = median(t.runs.iter().map(|r| per_gib(r.child_cpu)).collect());
    let a = median(t.runs.iter().map(|r| per_gib(r.process_cpu)).collect());
    println!(
        "{name:>22}: {rate:5.2} GB/s   parent CPU {p:.3} s/GiB   child CPU {c:.3} s/GiB   process CPU {a:.3} s/GiB   ({} runs)",
        t.runs.len()
    );
    (rate, p, c, a)
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without --bench: gigabyte runs belong to `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped (run it with cargo bench)");
        return;
    }
    let base = base_dir();
    let pd = tempfile::tempdir_in(&base).expect("parent dir");
    let cd = tempfile::tempdir_in(&base).expect("child dir");
    let parent = Store::open(store_config(pd.path())).expect("parent store").0;
    let child = Store::open(store_config(cd.path())).expect("child store").0;
    let ptask = fill_parent(&parent);
    let data_path = pd.path().join("tasks").join(ptask.id().shard()).join(format!("{}.data", ptask.id()));
    let (shoal, _addr) = Shoal::start(parent.clone(), child.clone());
    let raw = Mutex::new(Totals::default());
    let ours = Mutex::new(Totals::default());
    let net = Mutex::new(Totals::default());

    // SHOAL_BENCH_QUICK=1 skips criterion and keeps only the alternating rounds below.
    let quick = std::env::var_os("SHOAL_BENCH_QUICK").is_some();
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    if !quick {
        let mut g = c.benchmark_group("transfer_1GiB");
        g.sampling_mode(SamplingMode::Flat).throughput(Throughput::Bytes(LEN));
        g.bench_function("raw_sendfile_discard", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        let r = raw_once(&data_path);
                        raw.lock().map(|mut t| t.runs.push(r)).ok();
                        r.wall
                    })
                    .sum()
            })
        });
        g.bench_function("shoal_parent_to_child_store", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        let r = shoal.once(true);
                        ours.lock().map(|mut t| t.runs.push(r)).ok();
                        r.wall
                    })
                    .sum()
            })
        });
        g.bench_function("shoal_parent_to_child_no_storage", |b| {
            b.iter_custom(|n| {
                (0..n)
                    .map(|_| {
                        let r = shoal.once(false);
                        net.lock().map(|mut t| t.runs.push(r)).ok();
                        r.wall
                    })
                    .sum()
            })
        });
        g.finish();
    }
    // Alternating rounds, so both figures see the same machine state.
    for _ in 0..5 {
        let r = raw_once(&data_path);
        raw.lock().map(|mut t| t.runs.push(r)).ok();
        let r = shoal.once(true);
        ours.lock().map(|mut t| t.runs.push(r)).ok();
        let r = shoal.once(false);
        net.lock().map(|mut t| t.runs.push(r)).ok();
    }
    c.final_summary();

    println!("\n== 1 GiB over loopback, 4 MiB pieces, medians over every run of this process ==");
    let raw = raw.into_inner().unwrap_or_default();
    let ours = ours.into_inner().unwrap_or_default();
    let (rr, rp, rc, ra) = describe("raw sendfile→discard", &raw);
    let (or, op, oc, oa) = describe("shoal parent→child", &ours);
    let net = net.into_inner().unwrap_or_default();
    let (nr, np, _, _) = describe("shoal, no child storage", &net);
    println!("rate ratio (ours / raw):               {:.2}  (goal ≥ 0.80)", or / rr);
    println!("parent CPU/GiB ratio (ours / raw):     {:.2}  (goal ≤ 1.50)", op / rp);
    println!("without child storage: rate {:.2}, parent CPU {:.2}", nr / rr, np / rp);
    println!("child CPU/GiB ratio (ours / raw):      {:.2}  (ours also checks crc32c and writes to storage)", oc / rc);
    println!("process CPU/GiB ratio (ours / raw):    {:.2}", oa / ra);
    let complete = shoal.complete.lock().map(|v| v.clone()).unwrap_or_default();
    let c = median(complete.iter().map(|d| LEN as f64 / d.as_secs_f64() / 1e9).collect());
    println!("child task complete (all pieces + storage sha256 + fdatasync): {c:.2} GB/s median");
    println!("zero-copy fallbacks: {}", shoal::storage::zero_copy_fallbacks());
    shoal.server.shutdown();
    drop(shoal);
}
