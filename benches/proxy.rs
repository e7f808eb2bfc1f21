//! Proxy local hit: a cached object (1 GiB by default) through a real `shoal daemon` process's proxy,
//! beside the raw baseline of a tiny loopback server in this process sending the same file with sendfile,
//! measured in the same run, both read by the same discarding client.
//!
//! The in-bench server is also the origin the daemon filled its cache from. Server CPU per GiB is the
//! daemon process's utime+stime (/proc/PID/stat) for Shoal and the serving thread's CPU clock for the raw
//! server. After criterion's samples, interleaved rounds (SHOAL_BENCH_ROUNDS, default 7) give the median
//! ratio per round, the way benches/storage.rs does for ingest.
//! SHOAL_BENCH_DIR picks the file system (default /var/tmp), SHOAL_BENCH_PROXY_MIB the size (default 1024).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use sha2::{Digest, Sha256};

const GIB: f64 = (1u64 << 30) as f64;

fn size() -> u64 {
    let mib: u64 = std::env::var("SHOAL_BENCH_PROXY_MIB").ok().and_then(|m| m.parse().ok()).unwrap_or(1024);
    mib << 20
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// utime+stime of a process, in seconds.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3; utime, stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // SAFETY: sysconf with a valid name has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    match (f.get(11), f.get(12)) {
        (Some(u), Some(s)) => (u + s) as f64 / tck,
        _ => 0.0,
    }
}

/// A loopback HTTP/1.1 server sending one file with sendfile (200, or 206 for `Range: bytes=a-[b]`),
/// one thread per connection, `Connection: close`. Adds each connection's thread CPU to `cpu_ns`.
struct RawServer {
    addr: SocketAddr,
    cpu_ns: Arc<AtomicU64>,
}

fn head_of(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).ok()?;
        if n == 0 || head.len() > 64 << 10 {
            return None;
        }
        head.extend_from_slice(&b[..n]);
    }
    String::from_utf8(head).ok()
}

fn serve_one(mut s: TcpStream, file: &Path, path: &str) {
    let Some(head) = head_of(&mut s) else { return };
    let Ok(f) = std::fs::File::open(file) else { return };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let want = head.split_whitespace().nth(1).unwrap_or("");
    if !want.ends_with(path) {
        let _ = s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let range = head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        if !n.trim().eq_ignore_ascii_case("range") {
            return None;
        }
        let (a, b) = v.trim().strip_prefix("bytes=")?.split_once('-')?;
        let a: u64 = a.parse().ok()?;
        let b: u64 = if b.is_empty() { len.checked_sub(1)? } else { b.parse::<u64>().ok()?.min(len.checked_sub(1)?) };
        (a <= b).then_some((a, b))
    });
    let (mut off, end, status) = match range {
        Some((a, b)) => (a, b + 1, format!("206 Partial Content\r\nContent-Range: bytes {a}-{b}/{len}")),
        None => (0, len, "200 OK".to_owned()),
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", end - off);
    if s.write_all(head.as_bytes()).is_err() {
        return;
    }
    while off < end {
        let mut o = off as libc::off_t;
        let chunk = (end - off).min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the call; `o` is a valid, writable offset.
        let n = unsafe { libc::sendfile(s.as_raw_fd(), f.as_raw_fd(), &mut o, chunk) };
        if n <= 0 {
            return;
        }
        off += n as u64;
    }
}

impl RawServer {
    fn start(file: PathBuf, path: String) -> RawServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind the raw server");
        let addr = l.local_addr().expect("raw server address");
        let cpu_ns = Arc::new(AtomicU64::new(0));
        let cpu = cpu_ns.clone();
        // The accept thread lives as long as the bench process.
        std::thread::spawn(move || {
            for s in l.incoming().map_while(Result::ok) {
                let (file, path, cpu) = (file.clone(), path.clone(), cpu.clone());
                std::thread::spawn(move || {
                    let t0 = thread_cpu_ns();
                    serve_one(s, &file, &path);
                    cpu.fetch_add(thread_cpu_ns() - t0, Ordering::Relaxed);
                });
            }
        });
        RawServer { addr, cpu_ns }
    }

    fn cpu_secs(&self) -> f64 {
        self.cpu_ns.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// GET `url` (absolute form when `proxy` is given); discards the body. Returns (body bytes, x-shoal-source).
fn get(to: SocketAddr, url: &str, proxy: bool) -> (u64, String) {
    let mut s = TcpStream::connect(to).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let target =
        if proxy { url.to_owned() } else { url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap_or_default() };
    let host = url.split('/').nth(2).unwrap_or("");
    write!(s, "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("send request");
    let mut buf = vec![0u8; 1 << 20];
    let mut got = Vec::new();
    let (mut body, head) = loop {
        let n = s.read(&mut buf).expect("read head");
        assert!(n > 0, "connection closed before the response head");
        got.extend_from_slice(&buf[..n]);
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break ((got.len() - i - 4) as u64, String::from_utf8_lossy(&got[..i]).into_owned());
        }
    };
    assert!(head.starts_with("HTTP/1.1 200"), "unexpected response: {head}");
    loop {
        let n = s.read(&mut buf).expect("read body");
        if n == 0 {
            break;
        }
        body += n as u64;
    }
    let source = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("x-shoal-source")))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    (body, source)
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port")
}

/// A `shoal daemon` child (the release binary cargo built for this bench), stopped on drop.
struct Daemon {
    child: Child,
    proxy: SocketAddr,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let (proxy, upload, metrics) = (free_addr(), free_addr(), free_addr());
        let log = dir.join("daemon.log");
        let child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["daemon", "--workers", "1", "--proxy-addr", &proxy.to_string()])
            .args(["--upload-addr", &upload.to_string(), "--metrics-addr", &metrics.to_string()])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("SHOAL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("daemon log"))
            .spawn()
            .expect("start shoal daemon");
        let d = Daemon { child, proxy };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("daemon started") {
            assert!(
                Instant::now() < deadline,
                "daemon did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid with SIGTERM (clean shutdown), then reap it.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    raw: RawServer,
    daemon: Daemon,
    url: String,
    size: u64,
}

fn setup() -> Setup {
    let base = std::env::var_os("SHOAL_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/tmp".into());
    let dir = tempfile::tempdir_in(base).expect("bench dir");
    let size = size();
    // Random-looking bytes, named by their sha256 like a Git LFS object.
    let obj = dir.path().join("obj");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&obj).expect("object file"));
    let mut h = Sha256::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        for c in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        h.update(&block);
        f.write_all(&block).expect("write object");
    }
    f.flush().expect("flush object");
    drop(f);
    let oid = hex::encode(h.finalize());
    let raw = RawServer::start(obj, format!("/{oid}"));
    let url = format!("http://{}/{oid}", raw.addr);
    let daemon = Daemon::start(dir.path());
    // Fill the cache through the proxy, then wait until it answers as a complete local hit.
    let (n, first) = get(daemon.proxy, &url, true);
    assert_eq!(n, size, "first GET through the proxy");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (n, src) = get(daemon.proxy, &url, true);
        assert_eq!(n, size);
        if src == "local" {
            break;
        }
        assert!(Instant::now() < deadline, "no local hit after 60 s (first: {first}, now: {src})");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Warm the page cache for the raw side too.
    assert_eq!(get(raw.addr, &url, false).0, size);
    Setup { _dir: dir, raw, daemon, url, size }
}

fn bench(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group("proxy_local_hit");
    g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(s.size));
    g.bench_function("raw_sendfile", |b| b.iter(|| assert_eq!(get(s.raw.addr, &s.url, false).0, s.size)));
    g.bench_function("shoal_proxy", |b| b.iter(|| assert_eq!(get(s.daemon.proxy, &s.url, true).0, s.size)));
    g.finish();
}

/// Alternating rounds (which side goes first alternates): the median of per-round ratios carries over
/// better than two means taken minutes apart on a noisy machine.
fn interleaved(s: &Setup, rounds: usize) {
    let pid = s.daemon.child.id();
    let gib = s.size as f64 / GIB;
    let mut rows: [Vec<(f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        for k in 0..2 {
            let v = (k + r) % 2;
            let (c0, t0) = if v == 0 { (s.raw.cpu_secs(), Instant::now()) } else { (process_cpu(pid), Instant::now()) };
            let proxy = v == 1;
            let n = get(if proxy { s.daemon.proxy } else { s.raw.addr }, &s.url, proxy).0;
            assert_eq!(n, s.size);
            let wall = t0.elapsed().as_secs_f64();
            let cpu = if v == 0 { s.raw.cpu_secs() - c0 } else { process_cpu(pid) - c0 };
            rows[v].push((gib / wall, cpu / gib));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let col = |v: usize, i: usize| rows[v].iter().map(|r| if i == 0 { r.0 } else { r.1 }).collect::<Vec<_>>();
    let rate_ratio = median((0..rounds).map(|r| rows[1][r].0 / rows[0][r].0).collect());
    let cpu_ratio = median((0..rounds).map(|r| rows[1][r].1 / rows[0][r].1.max(1e-9)).collect());
    println!(
        "\n| cached {:.0} MiB to a loopback client, {rounds} interleaved rounds | median GiB/s | median server CPU s/GiB |",
        s.size as f64 / (1u64 << 20) as f64
    );
    println!("|---|---|---|");
    println!("| raw sendfile server (baseline) | {:.2} | {:.3} |", median(col(0, 0)), median(col(0, 1)));
    println!("| shoal daemon proxy, local hit | {:.2} | {:.3} |", median(col(1, 0)), median(col(1, 1)));
    println!("| ratio Shoal / raw (median per round) | {rate_ratio:.2}× | {cpu_ratio:.2}× |");
    println!(
        "(Shoal's CPU is the whole daemon process at 10 ms tick resolution; the raw server's is its serving thread.)"
    );
}

/// Mean seconds of one benchmark, from criterion's own output.
fn mean_secs(group: &str, name: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| "target".into());
    let p = target.join("criterion").join(group).join(name).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    Some(v["mean"]["point_estimate"].as_f64()? / 1e9)
}

fn summary(size: u64) {
    let gib = size as f64 / GIB;
    let g = "proxy_local_hit";
    let base = mean_secs(g, "raw_sendfile").map(|s| gib / s);
    println!("\n| benchmark | GiB/s | ratio to baseline |\n|---|---|---|");
    for n in ["raw_sendfile", "shoal_proxy"] {
        if let (Some(r), Some(b)) = (mean_secs(g, n).map(|s| gib / s), base) {
            println!("| {g}/{n} | {r:.2} | {:.2}× raw sendfile |", r / b);
        }
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without --bench: gigabyte runs belong to `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped (run it with cargo bench)");
        return;
    }
    let s = setup();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &s);
    c.final_summary();
    summary(s.size);
    let rounds = std::env::var("SHOAL_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(7);
    interleaved(&s, rounds);
}
