//! The storage engine end to end, on both io engines: pieces, streaming waits, digests, zero copy,
//! corruption, metadata rejection, GC and disk-full behaviour.

mod common;

use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use bytes::Bytes;
use common::*;
use shoal::storage::{IoEngineChoice, StorageError, Store, StoreConfig, TaskState};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn out_of_order_pieces_read_back_and_digest_matches() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engine);
        let piece = 64 << 10;
        let all = content(1, 10 * piece as usize + 1234);
        let task = store.create(&spec(1, Some(all.len() as u64), piece, Some(sha256(&all)))).unwrap();
        assert_eq!(task.piece_count(), Some(11));
        rt().block_on(async {
            let order = [7u32, 0, 10, 3, 1, 9, 2, 8, 4, 6, 5];
            for &k in &order {
                task.write_piece(k, piece_of(&all, piece, k), None).await.unwrap();
            }
            // Idempotent: a second copy of a complete piece is accepted and ignored.
            task.write_piece(3, piece_of(&all, piece, 3), None).await.unwrap();
            assert_eq!(task.wait_complete().await.unwrap(), sha256(&all), "{engine:?}");
            let mut back = Vec::new();
            for k in 0..11 {
                back.extend_from_slice(&task.read_piece(k).await.unwrap());
            }
            assert!(back == all, "{engine:?}: bytes read back differ");
        });
        assert_eq!(task.state(), TaskState::Complete);
        drop(task);
        store.close().unwrap();
        drop(store);
        // Reloaded: still complete, same digest, no pieces lost.
        let store = open(dir.path(), engine);
        let t = store.get(&id(1)).unwrap();
        assert!(t.is_complete());
        assert_eq!(t.sha256(), Some(sha256(&all)));
    }
}

#[test]
fn wrong_lengths_and_ranges_are_refused() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engine);
        let piece = 16 << 10;
        let task = store.create(&spec(2, Some(40_000), piece, None)).unwrap();
        rt().block_on(async {
            let short = Bytes::from(vec![1u8; 100]);
            assert!(matches!(task.write_piece(0, short, None).await, Err(StorageError::PieceLength { .. })));
            let big = Bytes::from(vec![1u8; piece as usize]);
            assert!(matches!(task.write_piece(3, big.clone(), None).await, Err(StorageError::PieceOutOfRange { .. })));
            let e = task.write_piece(0, big.clone(), Some(crc32c::crc32c(&big) ^ 1)).await;
            assert!(matches!(e, Err(StorageError::CrcMismatch { .. })), "a peer's bad crc writes nothing");
            assert!(!task.has_piece(0));
            assert!(matches!(task.read_piece(0).await, Err(StorageError::PieceMissing(0))));
        });
        assert!(matches!(store.create(&spec(2, Some(1), piece, None)), Err(StorageError::TaskExists(_))));
        let bad_piece = shoal::storage::TaskSpec { piece_length: Some(3000), ..spec(3, Some(1), piece, None) };
        assert!(matches!(store.create(&bad_piece), Err(StorageError::Invalid(_))));
    }
}

#[test]
fn readers_wait_for_pieces_while_the_writer_fills_others() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engine);
        let piece = 32 << 10;
        let n = 16u32;
        let all = content(3, (n * piece) as usize);
        let task = store.create(&spec(3, Some(all.len() as u64), piece, Some(sha256(&all)))).unwrap();
        let cores = shoal::runtime::Cores::start(2, "t").unwrap();
        // Four readers on the other core stream the task in order while the writer fills it.
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let t = task.clone();
                cores.spawn_on(1, async move {
                    let mut got = Vec::new();
                    for k in 0..n {
                        t.wait_piece(k).await.unwrap();
                        got.extend_from_slice(&t.read_piece(k).await.unwrap());
                    }
                    got
                })
            })
            .collect();
        let t = task.clone();
        let data = all.clone();
        let writer = cores.spawn_on(0, async move {
            for k in (0..n).rev() {
                tokio::time::sleep(Duration::from_millis(2)).await;
                t.write_piece(k, piece_of(&data, piece, k), None).await.unwrap();
            }
        });
        rt().block_on(async {
            tokio::time::timeout(Duration::from_secs(30), writer).await.unwrap().unwrap();
            for r in readers {
                let got = tokio::time::timeout(Duration::from_secs(30), r).await.unwrap().unwrap();
                assert!(got == all, "{engine:?}: streamed bytes differ");
            }
            task.wait_complete().await.unwrap();
        });
        cores.shutdown();
    }
}

#[test]
fn unknown_length_grows_and_is_fixed_at_the_end() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engine);
        let piece = 16 << 10;
        for (n, len) in [(4u8, 5 * piece as usize + 77), (5u8, 3 * piece as usize), (6u8, 0)] {
            let all = content(n as u64, len);
            let task = store.create(&spec(n, None, piece, Some(sha256(&all)))).unwrap();
            assert_eq!(task.piece_count(), None);
            rt().block_on(async {
                let full = len / piece as usize;
                for k in 0..full as u32 {
                    task.write_piece(k, piece_of(&all, piece, k), None).await.unwrap();
                }
                // A short piece before the length is known is refused: it could only be the last one.
                if len % piece as usize != 0 {
                    let last = piece_of(&all, piece, full as u32);
                    assert!(task.write_piece(full as u32, last, None).await.is_err());
                }
                if full > 0 {
                    let e = task.set_content_length(piece as u64 / 2);
                    assert!(matches!(e, Err(StorageError::LengthConflict(_))), "pieces lie beyond that length");
                }
                task.set_content_length(len as u64).unwrap();
                if len % piece as usize != 0 {
                    task.write_piece(full as u32, piece_of(&all, piece, full as u32), None).await.unwrap();
                }
                assert_eq!(task.wait_complete().await.unwrap(), sha256(&all), "{engine:?} len {len}");
            });
            let size =
                std::fs::metadata(dir.path().join(format!("tasks/{}/{}.data", id(n).shard(), id(n)))).unwrap().len();
            assert_eq!(size, len as u64);
        }
    }
}

#[test]
fn digest_mismatch_discards_the_task() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engine);
        let piece = 16 << 10;
        let all = content(7, 3 * piece as usize);
        let task = store.create(&spec(7, Some(all.len() as u64), piece, Some([0xee; 32]))).unwrap();
        rt().block_on(async {
            for k in 0..3 {
                task.write_piece(k, piece_of(&all, piece, k), None).await.unwrap();
            }
            let e = tokio::time::timeout(Duration::from_secs(10), task.wait_complete()).await.unwrap();
            assert!(matches!(e, Err(StorageError::DigestMismatch { got, .. }) if got == sha256(&all)), "{e:?}");
        });
        assert!(matches!(task.state(), TaskState::Failed(_)));
        assert!(store.get(&id(7)).is_none(), "never served");
        let shard = dir.path().join("tasks").join(id(7).shard());
        assert_eq!(std::fs::read_dir(shard).unwrap().count(), 0, "files removed");
        // The same ID can be fetched again from scratch.
        assert!(store.create(&spec(7, Some(all.len() as u64), piece, Some(sha256(&all)))).is_ok());
    }
}

#[test]
fn flipped_bit_in_a_content_file_is_detected_and_the_piece_refetched() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let piece = 16 << 10;
        let all = content(8, 4 * piece as usize);
        {
            let store = open(dir.path(), engine);
            let task = store.create(&spec(8, Some(all.len() as u64), piece, Some(sha256(&all)))).unwrap();
            rt().block_on(async {
                for k in 0..4 {
                    task.write_piece(k, piece_of(&all, piece, k), None).await.unwrap();
                }
                task.wait_complete().await.unwrap();
            });
            store.close().unwrap();
        }
        let data = dir.path().join(format!("tasks/{}/{}.data", id(8).shard(), id(8)));
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[2 * piece as usize + 100] ^= 0x10;
        std::fs::write(&data, &bytes).unwrap();

        let store = open(dir.path(), engine);
        let task = store.get(&id(8)).unwrap();
        rt().block_on(async {
            assert!(task.zero_copy_piece(1).await.is_ok());
            let e = task.zero_copy_piece(2).await;
            assert!(matches!(e, Err(StorageError::CrcMismatch { piece: 2, .. })), "{e:?}");
            assert!(!task.has_piece(2), "corrupt piece forgotten");
            assert!(!task.is_complete(), "no longer complete while a piece is missing");
            task.write_piece(2, piece_of(&all, piece, 2), None).await.unwrap();
            let d = tokio::time::timeout(Duration::from_secs(10), task.wait_complete()).await.unwrap().unwrap();
            assert_eq!(d, sha256(&all));
            assert!(task.read_piece(2).await.unwrap() == piece_of(&all, piece, 2));
        });
    }
}

/// After an unclean stop the piece table may call a piece complete whose bytes never reached the disk (a
/// power loss; tests/power_loss.rs makes one for real). The store checks such a task's pieces at load.
#[test]
fn an_unclean_unfinished_task_is_checked_at_load() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let piece = 16 << 10;
        let all = content(9, 4 * piece as usize);
        {
            let store = open(dir.path(), engine);
            let task = store.create(&spec(9, Some(all.len() as u64), piece, Some(sha256(&all)))).unwrap();
            rt().block_on(async {
                for k in 0..3 {
                    task.write_piece(k, piece_of(&all, piece, k), None).await.unwrap();
                }
            });
            // Dropped without close(): the task stays DIRTY, as after kill -9 or a power cut.
        }
        let data = dir.path().join(format!("tasks/{}/{}.data", id(9).shard(), id(9)));
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[piece as usize..2 * piece as usize].fill(0); // piece 1 "never reached the disk"
        std::fs::write(&data, &bytes).unwrap();

        let (store, report) = shoal::storage::Store::open(shoal::storage::StoreConfig {
            io_engine: engine,
            ..shoal::storage::StoreConfig::new(dir.path())
        })
        .unwrap();
        assert_eq!((report.unclean, report.pieces_checked, report.pieces_cleared), (1, 2, 1), "{report:?}");
        let task = store.get(&id(9)).unwrap();
        assert_eq!(task.completed_pieces(), vec![0, 2], "only the bad piece is forgotten");
        store.close().unwrap();
        let (_, clean) = shoal::storage::Store::open(shoal::storage::StoreConfig::new(dir.path())).unwrap();
        assert_eq!((clean.unclean, clean.pieces_checked), (0, 0), "a clean stop costs no check: {clean:?}");
    }
}

#[test]
fn zero_copy_sends_exact_bytes_to_a_socket() {
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engine);
        let piece = 64 << 10;
        let all = content(9, 5 * piece as usize + 999);
        let task = store.create(&spec(9, Some(all.len() as u64), piece, None)).unwrap();
        rt().block_on(async {
            for k in 0..6 {
                task.write_piece(k, piece_of(&all, piece, k), None).await.unwrap();
            }
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let reader = tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let (mut s, _) = l.accept().await.unwrap();
                let mut v = Vec::new();
                s.read_to_end(&mut v).await.unwrap();
                v
            });
            let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
            // A range crossing piece boundaries, then a whole last (short) piece.
            let r = task.zero_copy_range(1000, 2 * piece as u64).await.unwrap();
            assert_eq!(r.send_to(&sock).await.unwrap(), 2 * piece as u64);
            let z = task.zero_copy_piece(5).await.unwrap();
            assert_eq!(z.send_to(&sock).await.unwrap(), 999);
            drop(sock);
            let got = reader.await.unwrap();
            let mut want = all[1000..1000 + 2 * piece as usize].to_vec();
            want.extend_from_slice(&all[5 * piece as usize..]);
            assert!(got == want, "{engine:?}: zero-copy bytes differ");
            assert!(task.zero_copy_range(all.len() as u64 - 10, 11).await.is_err(), "past the end");
        });
    }
}

#[test]
fn bad_metadata_is_discarded_and_orphans_removed_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let piece = 16 << 10;
    let all = content(10, piece as usize);
    {
        let store = open(dir.path(), engines()[0]);
        for n in [10u8, 11, 12] {
            let t = store.create(&spec(n, Some(all.len() as u64), piece, None)).unwrap();
            rt().block_on(t.write_piece(0, piece_of(&all, piece, 0), None)).unwrap();
            rt().block_on(t.wait_complete()).unwrap();
        }
        store.close().unwrap();
    }
    let path = |n: u8, ext: &str| dir.path().join(format!("tasks/{}/{}.{ext}", id(n).shard(), id(n)));
    // 11: garbage metadata; 12: truncated metadata; 13: content file without metadata; a leftover temp
    // file; and a file that is not ours, which must be left alone.
    std::fs::write(path(11, "meta"), b"not a shoal metadata file").unwrap();
    let m = std::fs::read(path(12, "meta")).unwrap();
    std::fs::write(path(12, "meta"), &m[..m.len() / 2]).unwrap();
    std::fs::create_dir_all(path(13, "data").parent().unwrap()).unwrap();
    std::fs::write(path(13, "data"), b"orphan").unwrap();
    std::fs::create_dir_all(path(14, "meta").parent().unwrap()).unwrap();
    std::fs::write(path(14, "meta.tmp"), b"half-created").unwrap();
    let foreign = dir.path().join("tasks").join(id(10).shard()).join("README.txt");
    std::fs::write(&foreign, b"not ours").unwrap();

    let (store, report) = Store::open(StoreConfig::new(dir.path())).unwrap();
    assert_eq!(report.loaded, 1);
    assert_eq!(report.discarded, 2);
    assert_eq!(report.orphans_removed, 2);
    assert!(store.get(&id(10)).is_some());
    for n in [11, 12, 13] {
        assert!(store.get(&id(n)).is_none());
        assert!(!path(n, "meta").exists() && !path(n, "data").exists(), "task {n} files removed");
    }
    assert!(!path(14, "meta.tmp").exists());
    assert!(foreign.exists(), "files that are not ours are left alone");
}

#[test]
fn gc_ttl_and_watermarks_spare_tasks_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let piece = 64 << 10;
    let size = 4 * piece as u64; // 256 KiB per task
    let mut cfg = StoreConfig::new(dir.path());
    cfg.gc.quota_bytes = Some(10 * size);
    cfg.gc.high_watermark = 0.8;
    cfg.gc.low_watermark = 0.5;
    cfg.gc.ttl = Some(Duration::from_secs(3600));
    let (store, _) = Store::open(cfg).unwrap();
    let all = content(20, size as usize);
    let mut now = 1_000_000_000_000u64;
    for n in 0..9u8 {
        let t = store.create(&spec(n, Some(size), piece, None)).unwrap();
        rt().block_on(async {
            for k in 0..4 {
                t.write_piece(k, piece_of(&all, piece, k), None).await.unwrap();
            }
            t.wait_complete().await.unwrap();
        });
        now += 1000;
    }
    // Access times: task n was last read at base + n seconds, except that 0 is read now (most recent).
    let base = now;
    for n in 0..9u8 {
        let t = store.get(&id(n)).unwrap();
        set_access(&store, n, base + n as u64 * 1000);
        drop(t);
    }
    set_access(&store, 0, base + 100_000);
    // Task 1 (oldest) is in use: a reader holds it.
    let held = store.get(&id(1)).unwrap();
    let usage = store.usage_bytes();
    let per = usage / 9;
    assert!(per >= size, "usage {usage}");
    let r = store.gc(base + 200_000);
    assert!(r.expired.is_empty());
    // Above the high watermark: evict least recently used until under the low one, skipping the held task.
    let need = (usage - (10 * size) / 2).div_ceil(per) as u8;
    let want: Vec<_> = (2..2 + need).map(id).collect();
    assert_eq!(r.evicted, want, "{r:?}");
    assert!(r.usage_after <= 5 * size && r.usage_before == usage);
    assert!(store.get(&id(1)).is_some() && store.get(&id(0)).is_some());
    drop(held);
    // TTL: an hour after their last access every task but 0 (read later than the others) expires.
    let r = store.gc(base + 9_000 + 3_600_001);
    let mut want = vec![id(1)];
    want.extend((2 + need..9).map(id));
    assert_eq!(r.expired, want, "{r:?}");
    assert_eq!(store.list().len(), 1);
    assert_eq!(store.evictions(), 8);
}

fn set_access(store: &Arc<Store>, n: u8, ms: u64) {
    // Reads stamp the wall clock; tests stamp chosen instants through the same metadata field.
    let t = store.get(&id(n)).unwrap();
    t.touch_at(ms);
}

#[test]
fn disk_full_is_a_clear_error_and_the_store_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&mnt)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "mounting a 2 MiB tmpfs needs root (CI runs as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    for engine in engines() {
        let store = open(&mnt, engine);
        let piece = 64 << 10;
        // Longer than the whole file system: refused before any reservation.
        let e = store.create(&spec(30, Some(8 << 20), piece, None)).err();
        assert!(matches!(e, Some(StorageError::ExceedsQuota { .. })), "{e:?}");
        assert!(store.get(&id(30)).is_none());
        // Known length that fits the file system but not what is free: the reservation fails at creation
        // and leaves no files behind.
        let first = store.create(&spec(32, Some(1536 << 10), piece, None)).unwrap();
        let e = store.create(&spec(30, Some(1536 << 10), piece, None)).err();
        assert!(matches!(e, Some(StorageError::DiskFull { .. })), "{e:?}");
        assert!(store.get(&id(30)).is_none());
        drop(first);
        assert!(store.remove(&id(32), "test"));
        // Unknown length (a chunked origin): pieces succeed until the disk fills, then a clear error.
        let t = store.create(&spec(31, None, piece, None)).unwrap();
        let all = content(31, 64 * piece as usize);
        let mut failed_at = None;
        rt().block_on(async {
            for k in 0..64 {
                match t.write_piece(k, piece_of(&all, piece, k), None).await {
                    Ok(()) => {}
                    Err(StorageError::DiskFull { .. }) => {
                        failed_at = Some(k);
                        break;
                    }
                    Err(e) => panic!("{engine:?}: unexpected {e}"),
                }
            }
        });
        let k = failed_at.expect("a 4 MiB stream cannot fit a 2 MiB file system");
        assert!(!t.has_piece(k), "the failed piece is not marked complete");
        drop(t);
        // Freeing the space makes the engine usable again.
        assert!(store.remove(&id(31), "test"));
        let small = store.create(&spec(32, Some(1000), piece, None)).unwrap();
        rt().block_on(small.write_piece(0, Bytes::from(content(32, 1000)), None)).unwrap();
        assert!(small.has_piece(0));
        drop(small);
        store.remove(&id(32), "test");
    }
}

#[test]
fn a_write_abandoned_after_hashing_does_not_poison_the_digest() {
    // The caller gives up at different instants: while piece 2's crc/sha256 pass runs on the blocking pool,
    // or after it finished but before the caller saw it.
    // On a loaded machine the whole write can finish within the first poll (hashing and the write on the
    // blocking pool both done before the poll looks): such an attempt abandons nothing and is run again.
    let mut abandoned = 0;
    for (attempt, engine) in engines().into_iter().cycle().take(120).enumerate() {
        if abandoned == 12 {
            break;
        }
        let round = abandoned;
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), engine);
        let piece = 64 << 10;
        let first = content(40, 6 * piece as usize);
        // What is finally stored differs from the abandoned piece 2 (a retry from another source): the
        // recorded digest must be that of the stored bytes, so no expected digest is set here.
        let mut all = first.clone();
        all[2 * piece as usize] ^= 0xff;
        let task = store.create(&spec(40, Some(all.len() as u64), piece, None)).unwrap();
        let tested = rt().block_on(async {
            for k in 0..2 {
                task.write_piece(k, piece_of(&all, piece, k), None).await.unwrap();
            }
            // Piece 2 is next in order, so its pass feeds the digest; then the caller gives up before it is
            // stored (a client disconnect, a peer timeout).
            let mut fut = Box::pin(task.write_piece(2, piece_of(&first, piece, 2), None));
            let waker = std::task::Waker::noop();
            if fut.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready() {
                return false;
            }
            // Dropped while the pass runs, or after it finished but before the caller saw its result.
            std::thread::sleep(Duration::from_micros(150 * (round as u64 / 2)));
            drop(fut);
            // Pipelined in-order writers, as a streaming origin download issues them.
            let futs: Vec<_> = (2..6).map(|k| task.write_piece(k, piece_of(&all, piece, k), None)).collect();
            for f in futs {
                f.await.unwrap();
            }
            let d = tokio::time::timeout(Duration::from_secs(10), task.wait_complete()).await.unwrap();
            assert_eq!(d.unwrap(), sha256(&all), "{engine:?} round {round} (attempt {attempt})");
            let stored = std::fs::read(task.info().data_path).unwrap();
            assert_eq!(stored, all);
            true
        });
        abandoned += usize::from(tested);
    }
    assert_eq!(abandoned, 12, "twelve rounds abandoned a write mid-pass");
}

/// A declared length that could never fit (over the quota, or the whole file system without one) is
/// refused before anything is preallocated: a peer or origin cannot make the store reserve it.
#[test]
fn a_length_over_the_quota_or_the_file_system_is_refused_before_preallocation() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.io_engine = IoEngineChoice::Sync;
    cfg.gc.quota_bytes = Some(1 << 20);
    let store = Store::open(cfg).unwrap().0;
    let e = store.create(&spec(1, Some(2 << 20), 16 << 10, None)).err();
    assert!(
        matches!(e, Some(StorageError::ExceedsQuota { len, limit }) if len == 2 << 20 && limit == 1 << 20),
        "{e:?}"
    );
    assert!(store.create(&spec(2, Some(1 << 20), 16 << 10, None)).is_ok(), "exactly the quota fits");
    let unbounded = open(&dir.path().join("u"), IoEngineChoice::Sync);
    let e = unbounded.create(&spec(3, Some(u64::MAX / 2), 64 << 20, None)).err();
    assert!(matches!(e, Some(StorageError::ExceedsQuota { .. })), "{e:?}");
    let shard = dir.path().join("tasks").join(id(1).shard());
    assert!(!shard.join(format!("{}.data", id(1))).exists(), "nothing was created for the refused task");
}

/// Pieces in page-aligned buffers (as the origin and peer paths fill them) go to the disk with O_DIRECT,
/// the short last piece's tail through the page cache; pieces that arrive ahead of the hash wait in
/// memory under the daemon-wide cap. Read back from the file after completion (nothing is held then),
/// the bytes and the digest are the object's, on both engines and in both ingest modes.
#[test]
fn direct_and_buffered_ingest_store_the_same_bytes() {
    use shoal::storage::buf;
    use shoal::storage::Ingest;
    for engine in engines() {
        for ingest in [Ingest::Direct, Ingest::Buffered] {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = StoreConfig::new(dir.path());
            cfg.io_engine = engine;
            cfg.ingest = ingest;
            let store = Store::open(cfg).unwrap().0;
            let piece = 256 << 10;
            let all = content(30, 9 * piece as usize + 4097);
            let task = store.create(&spec(30, Some(all.len() as u64), piece, Some(sha256(&all)))).unwrap();
            rt().block_on(async {
                for &k in &[2u32, 1, 9, 0, 3, 5, 4, 8, 7, 6] {
                    let mut b = buf::take(piece as usize);
                    b.fill_from(&piece_of(&all, piece, k));
                    task.write_piece(k, b.freeze(), None).await.unwrap();
                    assert!(buf::held_bytes() <= buf::HOLD_CAP);
                }
                assert_eq!(task.wait_complete().await.unwrap(), sha256(&all), "{engine:?} {ingest:?}");
                let mut back = Vec::new();
                for k in 0..10 {
                    back.extend_from_slice(&task.read_piece(k).await.unwrap());
                }
                assert!(back == all, "{engine:?} {ingest:?}: bytes read back differ");
            });
            assert_eq!(std::fs::read(task.info().data_path).unwrap(), all, "{engine:?} {ingest:?}: the file");
        }
    }
}

/// A client streaming a download ahead of the hash (pieces that arrived out of order) does not leave them
/// in memory once the hash has them: a held piece goes when the hash and every client streaming the task
/// have it. With a second client still to read them, they stay; with no client, they stay for children.
#[test]
fn held_pieces_go_once_hashed_and_read_by_every_streaming_client() {
    use shoal::storage::buf;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), IoEngineChoice::Sync);
    let piece: u32 = 64 << 10;
    let all = content(31, 10 * piece as usize);
    let task = store.create(&spec(31, Some(all.len() as u64), piece, Some(sha256(&all)))).unwrap();
    let write = |k: u32| {
        let mut b = buf::take(piece as usize);
        b.fill_from(&piece_of(&all, piece, k));
        let task = task.clone();
        async move { task.write_piece(k, b.freeze(), None).await.unwrap() }
    };
    let read_all = |k: u32| {
        let task = task.clone();
        async move { assert_eq!(task.read_piece_slice(k, 0, piece).await.unwrap().len(), piece as usize) }
    };
    let hashed = |n: u32| {
        let task = task.clone();
        async move {
            for _ in 0..500 {
                if task.hashed_pieces() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the hash never reached piece {n}: at {}", task.hashed_pieces());
        }
    };
    rt().block_on(async {
        let (one, two) = (task.reader(), task.reader());
        for k in 1..=4 {
            write(k).await;
            read_all(k).await;
        }
        assert!((1..=4).all(|k| task.in_memory(k)), "ahead of the hash: held for it");
        write(0).await;
        hashed(5).await;
        assert!((1..=4).all(|k| task.in_memory(k)), "hashed, read by one client of two: still held");
        for k in 1..=4 {
            read_all(k).await;
        }
        assert!((1..=4).all(|k| !task.in_memory(k)), "hashed and read by both: gone");
        drop(two);
        write(6).await;
        read_all(6).await;
        write(5).await;
        hashed(7).await;
        assert!(!task.in_memory(6), "hashed and read by the one client left: gone");
        assert!(task.in_memory(5), "hashed, not read yet: held for the client");
        drop(one);
        write(8).await;
        write(7).await;
        hashed(9).await;
        assert!(task.in_memory(7) && task.in_memory(8), "no client streaming: held for children");
    });
}
