//! Power loss under the store, beyond kill -9: a daemon downloads into ext4 on a disk whose write cache
//! is lost at a random instant (see `common::volatile_disk`). After each cut the durable image is mounted
//! again, as after a reboot, and:
//! - the raw files are read as storage-format.md describes them: how many pieces the piece table calls
//!   complete hold wrong bytes (possible: the mapped piece table may reach the disk before the data), and
//!   whether a task marked COMPLETE has the expected sha256 (it must: COMPLETE follows an fdatasync);
//! - the store is opened as the daemon opens it: from then on no piece it calls complete holds wrong bytes
//!   and no complete task fails its sha256;
//! - a daemon restarted on that directory serves the exact object, fetching from the origin only what is
//!   missing.
//!
//! Needs root, /dev/fuse and loop devices. SHOAL_POWER_ROUNDS sets the number of cuts (default 6) and
//! SHOAL_POWER_SEED replays a run.

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{daemon_with, get, shoal};
use common::origin::{Flavour, Origin};
use common::volatile_disk::{self, VolatileDisk};
use common::*;
use rand::{Rng, SeedableRng};
use shoal::storage::{Store, StoreConfig};

const OBJECT: usize = 24 << 20;
const DISK: u64 = 512 << 20;

/// One task's files as storage-format.md lays them out.
struct RawTask {
    complete: bool,
    content_length: Option<u64>,
    piece_length: u64,
    /// (piece, crc) of every entry marked complete.
    pieces: Vec<(u32, u32)>,
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Parses a metadata file by the documented layout; None where Shoal itself would reject it at load.
fn parse_meta(bytes: &[u8]) -> Option<RawTask> {
    if bytes.len() < 4096 || &bytes[..8] != b"SHOALMD\0" {
        return None;
    }
    let capacity = le32(bytes, 20) as usize;
    if bytes.len() != 4096 + 8 * capacity {
        return None;
    }
    let len = le64(bytes, 3080);
    let pieces = (0..capacity)
        .filter_map(|k| {
            let e = le64(bytes, 4096 + 8 * k);
            (e & (1 << 32) != 0).then_some((k as u32, e as u32))
        })
        .collect();
    Some(RawTask {
        complete: le32(bytes, 3072) & 2 != 0,
        content_length: (len != u64::MAX).then_some(len),
        piece_length: le32(bytes, 16) as u64,
        pieces,
    })
}

/// The number after `key` in a log line.
fn field(line: &str, key: &str) -> Option<usize> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn meta_files(data_dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for shard in std::fs::read_dir(data_dir.join("tasks")).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            if f.path().extension().is_some_and(|e| e == "meta") {
                out.push(f.path());
            }
        }
    }
    out
}

#[derive(Debug, Default)]
struct Raw {
    tasks: usize,
    complete_tasks: usize,
    bad_complete_tasks: usize,
    marked_pieces: usize,
    wrong_marked_pieces: usize,
}

/// What survived, read straight from the files.
fn inspect_raw(data_dir: &Path, obj: &[u8]) -> Raw {
    let mut r = Raw::default();
    for meta in meta_files(data_dir) {
        let Some(t) = std::fs::read(&meta).ok().and_then(|b| parse_meta(&b)) else { continue };
        let data = std::fs::read(meta.with_extension("data")).unwrap_or_default();
        r.tasks += 1;
        if t.complete {
            r.complete_tasks += 1;
            r.bad_complete_tasks +=
                (sha256(&data) != sha256(obj) || t.content_length != Some(obj.len() as u64)) as usize;
        }
        for (k, crc) in t.pieces {
            let from = k as usize * t.piece_length as usize;
            let to = (from + t.piece_length as usize).min(obj.len());
            r.marked_pieces += 1;
            // The entry's crc is the one computed from the bytes in memory: it must always describe the object.
            assert_eq!(crc, crc32c::crc32c(&obj[from..to]), "piece {k}'s entry holds a crc of other bytes");
            r.wrong_marked_pieces += (data.get(from..to) != Some(&obj[from..to])) as usize;
        }
    }
    r
}

/// What the store makes of it once opened: (pieces it calls complete, of them wrong, complete tasks failing).
fn inspect_store(data_dir: &Path, obj: &[u8]) -> (usize, usize, usize) {
    let (store, _) = Store::open(StoreConfig::new(data_dir)).expect("store opens after a power cut");
    let (mut marked, mut wrong, mut bad_complete) = (0, 0, 0);
    for info in store.list() {
        let task = store.get(&info.id).unwrap();
        let data = std::fs::read(
            meta_files(data_dir)
                .into_iter()
                .find(|m| m.file_stem().is_some_and(|s| s.to_string_lossy() == info.id.to_string()))
                .unwrap()
                .with_extension("data"),
        )
        .unwrap();
        for k in task.completed_pieces() {
            let (off, len) =
                task.piece_range(k).unwrap_or((k as u64 * task.piece_length() as u64, task.piece_length()));
            let (from, to) = (off as usize, (off + len as u64) as usize);
            marked += 1;
            wrong += (data.get(from..to) != obj.get(from..to)) as usize;
        }
        if task.is_complete() {
            bad_complete += (sha256(&data) != sha256(obj)) as usize;
        }
    }
    store.close().unwrap();
    (marked, wrong, bad_complete)
}

/// The kernel's background writeback, at moments of the test's choosing: every 20–200 ms it starts
/// writeback of every task file (no flush), so pages of the mapped piece table reach the disk's volatile
/// cache at arbitrary points of a download, as the flusher thread would do after its 30 s expiry.
struct Flusher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(data_dir: &Path, seed: u64) -> Flusher {
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, s) = (data_dir.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
            // Bounded: the round cuts the power within seconds and stops us; 1,000 passes at most.
            for _ in 0..1000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(rng.gen_range(20..200)));
                for meta in meta_files(&dir) {
                    for f in [meta.clone(), meta.with_extension("data")] {
                        let Ok(file) = std::fs::File::open(&f) else { continue };
                        // SAFETY: sync_file_range on a descriptor we own, whole file, write-out only.
                        unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
                    }
                }
            }
        });
        Flusher { stop, thread: Some(thread) }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn power_cut_never_leaves_wrong_bytes_marked_good() {
    let rounds: u64 = std::env::var("SHOAL_POWER_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let base = volatile_disk::seed();
    eprintln!("power-loss rounds: {rounds}, SHOAL_POWER_SEED={base}");
    let origin = Origin::start("127.0.0.1", Flavour { ranges: true, content_length: true });
    // About 3 s for the object: a cut lands before, during or after the download.
    origin.set_frame_delay(Duration::from_millis(30));
    let (mut lost_blocks, mut raw_wrong, mut bad_complete, mut store_wrong, mut refetched) = (0, 0, 0, 0, 0u64);
    for r in 0..rounds {
        let seed = base.wrapping_add(r);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let tmp = tempfile::tempdir().unwrap();
        let mut disk = VolatileDisk::create(tmp.path(), DISK);
        let data_dir = disk.mount_point().join("data");
        // Rounds alternate a task keyed and verified by its digest (an LFS object) with one named by its URL
        // alone, whose sha256 the store computes (nothing to check it against but the bytes themselves).
        let (obj, url, digest) = if r % 4 < 2 {
            let (obj, oid, url) = origin.put_lfs(seed, OBJECT);
            (obj, url, Some(format!("sha256:{oid}")))
        } else {
            let obj = bytes::Bytes::from(content(seed, OBJECT));
            let path = format!("/files/{seed}.bin");
            origin.put(&path, obj.clone());
            (obj, origin.url(&path), None)
        };
        // Half the rounds write through the page cache, half with O_DIRECT (the default).
        let ingest = if r % 2 == 0 { "direct" } else { "buffered" };
        let yaml = format!("storage:\n  ingest: {ingest}\n");
        let mut d = daemon_with("127.0.0.1", &[], false, &data_dir, &yaml);
        let flusher = Flusher::start(&data_dir, seed);
        let mut client = shoal();
        client.args(["get", &url, "--daemon", &d.proxy.to_string(), "-O"]).arg(tmp.path().join("first"));
        if let Some(dg) = &digest {
            client.args(["--digest", dg]);
        }
        let mut client = client.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // Spread over the download (about 2 s here) and just after it, with jitter: every run has cuts
        // mid-download, whatever the seed.
        let at = Duration::from_millis(200 + (r % 7) * 350 + rng.gen_range(0..300));
        std::thread::sleep(at);
        let cut = disk.cut(seed);
        flusher.stop();
        d.proc.kill();
        let _ = client.kill();
        let _ = client.wait();
        disk.recover();

        let raw = inspect_raw(&data_dir, &obj);
        // The library's view, from a copy: the daemon below must find the unclean state itself.
        let copy = disk.mount_point().join("copy");
        let cp = std::process::Command::new("cp").arg("-a").arg(&data_dir).arg(&copy).status().unwrap();
        assert!(cp.success());
        let (marked, wrong, bad) = inspect_store(&copy, &obj);
        let sent = origin.bytes_sent();
        let d2 = daemon_with("127.0.0.1", &[], false, &data_dir, &yaml);
        let out = tmp.path().join("again");
        let (ok, err) = get(&d2, &url, &out, digest.as_deref());
        assert!(ok, "round {r}: the restarted daemon failed: {err}");
        assert!(std::fs::read(&out).unwrap() == obj, "round {r}: the restarted daemon served other bytes");
        let again = origin.bytes_sent() - sent;
        let opened = d2.proc.wait_for("storage opened", Duration::from_secs(1));
        let cleared: usize = field(&opened, "pieces_cleared=").expect("the load report names cleared pieces");
        assert_eq!(cleared, raw.wrong_marked_pieces, "round {r}: the daemon cleared other pieces than the wrong ones");
        drop(d2);
        eprintln!(
            "round {r} ({ingest}, {}): cut at {at:?} after {} flushes, {} cached blocks kept, {} lost; raw: {} tasks, {} complete \
             ({} bad), {} pieces marked, {} wrong; store: {marked} marked, {wrong} wrong, {bad} bad complete; \
             refetched {:.2} of the object",
            if digest.is_some() { "digest" } else { "url" },
            cut.flushes,
            cut.kept,
            cut.lost,
            raw.tasks,
            raw.complete_tasks,
            raw.bad_complete_tasks,
            raw.marked_pieces,
            raw.wrong_marked_pieces,
            again as f64 / obj.len() as f64
        );
        lost_blocks += cut.lost;
        raw_wrong += raw.wrong_marked_pieces;
        bad_complete += raw.bad_complete_tasks + bad;
        store_wrong += wrong;
        refetched += again;
        drop(disk);
    }
    eprintln!(
        "power-loss summary: {rounds} cuts, {lost_blocks} cached blocks lost, {raw_wrong} wrong pieces marked \
         complete on disk, {store_wrong} after the store opened, {bad_complete} bad complete tasks; refetched \
         {:.2} objects in all",
        refetched as f64 / OBJECT as f64
    );
    assert!(lost_blocks > 0, "no cut lost a cached write: the test exercised nothing");
    assert_eq!(bad_complete, 0, "a task marked complete failed its sha256 after a power cut");
    assert_eq!(store_wrong, 0, "the store called a piece with wrong bytes complete after a power cut");
}
