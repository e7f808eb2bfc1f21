//! Storage engine benchmarks, each beside its raw baseline measured in the same run:
//! - ingest: 1 GiB of 4 MiB pieces through the store (crc32c, piece marking, sha256 and the final
//!   fdatasync included) vs raw writes of the same size (O_DIRECT, and buffered pwrite), each ending with
//!   fdatasync so all of them pay for the disk. `inorder4`: pieces in order, 4 in flight (an origin stream);
//!   `random8`: random order, 8 in flight (pieces from several peers; sha256 then re-reads those it
//!   could not keep in memory). Each through O_DIRECT (`direct`, the default) and the page cache.
//! - send: every piece of a cached 1 GiB task to a loopback socket, sendfile vs read + write.
//!
//! The summary at the end prints each figure as a ratio to its baseline.
//! SHOAL_BENCH_DIR picks the file system (default: a temp dir under /var/tmp, which is the real disk).

use std::fs::OpenOptions;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use shoal::storage::{Ingest, IoEngineChoice, Store, StoreConfig, Task, TaskId, TaskSpec};

const SIZE: u64 = 1 << 30;
const PIECE: u32 = 4 << 20;

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("SHOAL_BENCH_DIR").map(PathBuf::from).unwrap_or_else(|| "/var/tmp".into());
    tempfile::tempdir_in(base).expect("bench dir")
}

fn pieces() -> Vec<Bytes> {
    // Random-looking bytes: a real object, not zeros that a file system might treat specially.
    let mut x = 0x1234_5678_9abc_def1u64;
    (0..SIZE / PIECE as u64)
        .map(|_| {
            let mut v = Vec::with_capacity(PIECE as usize);
            while v.len() < PIECE as usize {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.extend_from_slice(&x.to_le_bytes());
            }
            // In page-aligned piece buffers, as the origin and peer paths fill them: O_DIRECT ingest
            // writes these as they are.
            let mut b = shoal::storage::buf::take(PIECE as usize);
            b.fill_from(&v);
            b.freeze()
        })
        .collect()
}

fn raw_direct(path: &Path, data: &[Bytes]) {
    let f = OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(path).unwrap();
    // O_DIRECT needs an aligned buffer: copy each piece into one (the copy is ~5% of a disk write).
    let layout = std::alloc::Layout::from_size_align(PIECE as usize, 4096).unwrap();
    // SAFETY: layout has a non-zero size; the buffer is freed below with the same layout.
    let ptr = unsafe { std::alloc::alloc(layout) };
    assert!(!ptr.is_null());
    // SAFETY: ptr points to PIECE writable bytes that nothing else aliases until dealloc.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, PIECE as usize) };
    for (i, p) in data.iter().enumerate() {
        buf.copy_from_slice(p);
        f.write_all_at(buf, i as u64 * PIECE as u64).unwrap();
    }
    f.sync_data().unwrap();
    // SAFETY: allocated above with this layout, no references remain.
    unsafe { std::alloc::dealloc(ptr, layout) };
}

fn raw_buffered(path: &Path, data: &[Bytes]) {
    let f = OpenOptions::new().write(true).create(true).truncate(true).open(path).unwrap();
    for (i, p) in data.iter().enumerate() {
        f.write_all_at(p, i as u64 * PIECE as u64).unwrap();
    }
    f.sync_data().unwrap();
}

async fn ingest(store: &Arc<Store>, n: u8, data: &[Bytes], in_flight: usize, shuffled: bool) {
    let spec = TaskSpec {
        id: TaskId([n; 32]),
        url: "http://bench.test/obj".into(),
        content_length: Some(SIZE),
        piece_length: Some(PIECE),
        expected_sha256: None,
        digest_announced: false,
        credentialed: false,
    };
    store.remove(&spec.id, "bench");
    let task = store.create(&spec).unwrap();
    let mut order: Vec<u32> = (0..data.len() as u32).collect();
    if shuffled {
        // A fixed permutation, so every run writes the same order.
        let mut x = 0x9e37_79b9u64;
        for i in (1..order.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
    }
    let mut next = 0usize;
    let mut running = Vec::new();
    loop {
        while running.len() < in_flight && next < data.len() {
            let t = task.clone();
            let k = order[next];
            let d = data[k as usize].clone();
            running.push(tokio::task::spawn_local(async move { t.write_piece(k, d, None).await }));
            next += 1;
        }
        if running.is_empty() {
            break;
        }
        running.remove(0).await.unwrap().unwrap();
    }
    task.wait_complete().await.unwrap();
}

/// (name, io engine, ingest mode, pieces in flight, random order)
const INGEST: &[(&str, IoEngineChoice, Ingest, usize, bool)] = &[
    ("store_uring_direct_inorder4", IoEngineChoice::Uring, Ingest::Direct, 4, false),
    ("store_uring_buffered_inorder4", IoEngineChoice::Uring, Ingest::Buffered, 4, false),
    ("store_sync_direct_inorder4", IoEngineChoice::Sync, Ingest::Direct, 4, false),
    ("store_sync_buffered_inorder4", IoEngineChoice::Sync, Ingest::Buffered, 4, false),
    ("store_uring_direct_random8", IoEngineChoice::Uring, Ingest::Direct, 8, true),
    ("store_uring_buffered_random8", IoEngineChoice::Uring, Ingest::Buffered, 8, true),
];

fn bench_ingest(c: &mut Criterion) {
    let data = pieces();
    let dir = bench_dir();
    let mut g = c.benchmark_group("ingest_1GiB");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(SIZE));
    let raw = dir.path().join("raw");
    g.bench_function("raw_odirect_fdatasync", |b| b.iter(|| raw_direct(&raw, &data)));
    g.bench_function("raw_pwrite_fdatasync", |b| b.iter(|| raw_buffered(&raw, &data)));
    let _ = std::fs::remove_file(&raw);
    for (name, engine, ingest_mode, in_flight, shuffled) in INGEST {
        let mut cfg = StoreConfig::new(dir.path().join(name));
        cfg.io_engine = *engine;
        cfg.ingest = *ingest_mode;
        let store = Store::open(cfg).unwrap().0;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let local = tokio::task::LocalSet::new();
        g.bench_function(*name, |b| b.iter(|| local.block_on(&rt, ingest(&store, 1, &data, *in_flight, *shuffled))));
        store.remove(&TaskId([1; 32]), "bench");
    }
    g.finish();
}

fn bench_send(c: &mut Criterion) {
    let data = pieces();
    let dir = bench_dir();
    let store = Store::open(StoreConfig::new(dir.path())).unwrap().0;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, ingest(&store, 2, &data, 4, false));
    let task = store.get(&TaskId([2; 32])).unwrap();
    // Warm: the piece crc checks and the page cache, so both variants read from memory.
    local.block_on(&rt, async {
        for k in 0..task.piece_count().unwrap() {
            task.zero_copy_piece(k).await.unwrap();
        }
    });
    let mut g = c.benchmark_group("send_1GiB_loopback");
    g.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(2));
    g.throughput(Throughput::Bytes(SIZE));
    g.bench_function("sendfile", |b| b.iter(|| local.block_on(&rt, send(&task, true))));
    g.bench_function("read_write", |b| b.iter(|| local.block_on(&rt, send(&task, false))));
    g.finish();
}

async fn send(task: &Arc<Task>, zero_copy: bool) {
    use tokio::io::AsyncWriteExt;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        while let Ok(r) = s.read(&mut buf) {
            if r == 0 {
                break;
            }
            n += r as u64;
        }
        n
    });
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    for k in 0..task.piece_count().unwrap() {
        if zero_copy {
            task.zero_copy_piece(k).await.unwrap().send_to(&sock).await.unwrap();
        } else {
            let b = task.read_piece(k).await.unwrap();
            sock.write_all(&b).await.unwrap();
        }
    }
    drop(sock);
    assert_eq!(reader.join().unwrap(), SIZE);
}

/// The disk here is shared and its rate drifts by 2–3× between minutes, so sampling one variant after
/// another (criterion's way) compares different disks. This runs every variant once per round, in a rotated
/// order, and reports the median of the per-round ratios to the raw O_DIRECT write of the same round.
fn interleaved_ingest(rounds: usize) {
    let data = pieces();
    let dir = bench_dir();
    let raw = dir.path().join("raw");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let local = tokio::task::LocalSet::new();
    let stores: Vec<_> = INGEST
        .iter()
        .map(|(name, engine, ingest_mode, _, _)| {
            let mut cfg = StoreConfig::new(dir.path().join(name));
            cfg.io_engine = *engine;
            cfg.ingest = *ingest_mode;
            Store::open(cfg).unwrap().0
        })
        .collect();
    let n = 2 + INGEST.len();
    let mut secs = vec![Vec::new(); n];
    for round in 0..rounds {
        for j in 0..n {
            let v = (j + round) % n;
            let t0 = std::time::Instant::now();
            match v {
                0 => raw_direct(&raw, &data),
                1 => raw_buffered(&raw, &data),
                _ => {
                    let (_, _, _, in_flight, shuffled) = INGEST[v - 2];
                    local.block_on(&rt, ingest(&stores[v - 2], 1, &data, in_flight, shuffled));
                }
            }
            secs[v].push(t0.elapsed().as_secs_f64());
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let names: Vec<&str> =
        ["raw_odirect_fdatasync", "raw_pwrite_fdatasync"].into_iter().chain(INGEST.iter().map(|i| i.0)).collect();
    println!(
        "\n| ingest 1 GiB, {rounds} interleaved rounds | median GiB/s | median ratio to raw O_DIRECT (same round) |"
    );
    println!("|---|---|---|");
    for (v, name) in names.iter().enumerate() {
        let ratios: Vec<f64> = (0..rounds).map(|r| secs[0][r] / secs[v][r]).collect();
        let gibs = SIZE as f64 / (1u64 << 30) as f64 / median(secs[v].clone());
        println!("| {name} | {gibs:.2} | {:.2}× |", median(ratios));
    }
}

/// Mean seconds of one benchmark, from criterion's own output.
fn mean_secs(group: &str, name: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| "target".into());
    let p = target.join("criterion").join(group).join(name).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()?;
    Some(v["mean"]["point_estimate"].as_f64()? / 1e9)
}

fn summary() {
    let gib = SIZE as f64 / (1u64 << 30) as f64;
    let rate = |g: &str, n: &str| mean_secs(g, n).map(|s| gib / s);
    println!("\n| benchmark | GiB/s | ratio to baseline |\n|---|---|---|");
    let g = "ingest_1GiB";
    let base = rate(g, "raw_odirect_fdatasync");
    let names = ["raw_odirect_fdatasync", "raw_pwrite_fdatasync"].into_iter().chain(INGEST.iter().map(|i| i.0));
    for n in names {
        if let (Some(r), Some(b)) = (rate(g, n), base) {
            println!("| {g}/{n} | {r:.2} | {:.2}× raw O_DIRECT |", r / b);
        }
    }
    let g = "send_1GiB_loopback";
    let base = rate(g, "read_write");
    for n in ["sendfile", "read_write"] {
        if let (Some(r), Some(b)) = (rate(g, n), base) {
            println!("| {g}/{n} | {r:.2} | {:.2}× read+write |", r / b);
        }
    }
}

fn main() {
    // `cargo test --all-targets` runs bench binaries without --bench: gigabyte runs belong to `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark skipped (run it with cargo bench)");
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    bench_ingest(&mut c);
    bench_send(&mut c);
    c.final_summary();
    summary();
    let rounds = std::env::var("SHOAL_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(7);
    interleaved_ingest(rounds);
}
