//! The peer data plane between real stores over loopback: a parent's upload server and a child's pool on
//! different 127.0.0.x addresses, plus parent test doubles that die, stall or corrupt pieces.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::content;
use shoal::storage::{Store, StoreConfig, Task, TaskId, TaskSpec};
use shoal::transfer::frame::{Frame, FrameReader};
use shoal::transfer::proto::{ErrorCode, Hello, PieceHeader};
use shoal::transfer::{ClientConfig, Pool, ServerConfig, SubEvent, TransferError, UploadServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIMIT: Duration = Duration::from_secs(60);

fn store(dir: &tempfile::TempDir) -> Arc<Store> {
    Store::open(StoreConfig::new(dir.path())).expect("store opens").0
}

fn tid(n: u8) -> TaskId {
    TaskId([n; 32])
}

fn spec(id: TaskId, len: u64, piece: u32) -> TaskSpec {
    TaskSpec {
        id,
        url: format!("http://origin.test/{id}"),
        content_length: Some(len),
        piece_length: Some(piece),
        expected_sha256: None,
        digest_announced: false,
        credentialed: false,
    }
}

async fn fill(task: &Arc<Task>, data: &[u8], order: impl IntoIterator<Item = u32>) {
    for k in order {
        let (off, len) = task.piece_range(k).expect("piece in range");
        let bytes = bytes::Bytes::copy_from_slice(&data[off as usize..off as usize + len as usize]);
        task.write_piece(k, bytes, None).await.expect("parent piece written");
    }
}

async fn start_server(store: Arc<Store>, ip: &str, cfg: ServerConfig) -> (UploadServer, SocketAddr) {
    let l = TcpListener::bind((ip, 0)).await.expect("bind parent");
    let addr = l.local_addr().expect("addr");
    let server = UploadServer::new(store, cfg);
    let s = server.clone();
    tokio::spawn(async move { s.serve(l).await });
    (server, addr)
}

fn client_cfg(ip: &str) -> ClientConfig {
    ClientConfig { bind_ip: Some(ip.parse().expect("ip")), ..ClientConfig::default() }
}

async fn assert_same(child: &Arc<Task>, data: &[u8]) {
    for k in 0..child.piece_count().expect("count") {
        let (off, len) = child.piece_range(k).expect("range");
        let got = child.read_piece(k).await.expect("child piece");
        assert!(got[..] == data[off as usize..off as usize + len as usize], "piece {k} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_256_mib_over_one_pipelined_connection() {
    let (pd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (parent, child) = (store(&pd), store(&cd));
    let len = 256u64 << 20;
    let data = content(7, len as usize);
    let (ptask, _) = parent.get_or_create(&spec(tid(1), len, 4 << 20)).unwrap();
    fill(&ptask, &data, 0..64).await;
    let (server, addr) = start_server(parent.clone(), "127.0.0.2", ServerConfig::default()).await;
    let pool = Pool::new(client_cfg("127.0.0.3"));
    let (ctask, _) = child.get_or_create(&spec(tid(1), len, 4 << 20)).unwrap();
    let report = tokio::time::timeout(LIMIT, pool.download(addr, &ctask)).await.expect("in time").expect("download");
    assert_eq!(report.pieces, 64);
    assert_eq!(report.bytes, len);
    let want = tokio::time::timeout(LIMIT, ptask.wait_complete()).await.unwrap().unwrap();
    let got = tokio::time::timeout(LIMIT, ctask.wait_complete()).await.unwrap().unwrap();
    assert_eq!(got, want, "sha256 of the child's copy");
    let stats = server.stats();
    assert_eq!(stats.accepted, 1, "one connection for every piece");
    assert_eq!(pool.connects(), 1);
    assert_eq!(stats.pieces_served, 64);
    assert!(stats.peak_in_flight > 1, "requests were pipelined: {stats:?}");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_subscribed_while_parent_fills_receives_every_piece() {
    let (pd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (parent, child) = (store(&pd), store(&cd));
    let (n, pl) = (48u32, 64u32 << 10);
    let len = n as u64 * pl as u64 - 1000;
    let data = content(11, len as usize);
    let (ptask, _) = parent.get_or_create(&spec(tid(2), len, pl)).unwrap();
    fill(&ptask, &data, [5, 0]).await;
    let (server, addr) = start_server(parent.clone(), "127.0.0.2", ServerConfig::default()).await;
    let pool = Pool::new(client_cfg("127.0.0.3"));

    // The raw stream first: a snapshot of what the parent has, then Have as pieces land.
    let mut sub = pool.subscribe(addr, tid(2)).await.unwrap();
    match tokio::time::timeout(LIMIT, sub.next()).await.unwrap().unwrap() {
        Some(SubEvent::Snapshot { content_length, piece_length, pieces, complete }) => {
            assert_eq!((content_length, piece_length, complete), (Some(len), pl, false));
            assert_eq!(pieces, vec![0, 5]);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    fill(&ptask, &data, [9]).await;
    match tokio::time::timeout(LIMIT, sub.next()).await.unwrap().unwrap() {
        Some(SubEvent::Have(p)) => assert_eq!(p, vec![9]),
        other => panic!("expected Have, got {other:?}"),
    }
    drop(sub);

    let (ctask, _) = child.get_or_create(&spec(tid(2), len, pl)).unwrap();
    let dl = {
        let (pool, ctask) = (pool.clone(), ctask.clone());
        tokio::spawn(async move { pool.download(addr, &ctask).await })
    };
    let mut rest: Vec<u32> = (1..n).filter(|k| ![5, 9].contains(k)).rev().collect();
    rest.rotate_left(7);
    for k in rest {
        fill(&ptask, &data, [k]).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let had_before_parent_finished = ctask.completed_pieces().len();
    let report = tokio::time::timeout(LIMIT, dl).await.unwrap().unwrap().expect("download");
    assert!(had_before_parent_finished > 3, "pieces flowed while the parent was filling: {had_before_parent_finished}");
    assert_eq!(report.pieces, n);
    assert_same(&ctask, &data).await;
    assert_eq!(server.stats().accepted, 1);
    server.shutdown();
}

/// How a test double parent misbehaves on the first request it gets.
#[derive(Clone, Copy)]
enum Fake {
    HalfThenClose,
    HalfThenStall,
    FlipBit,
}

/// A parent that speaks the protocol but misbehaves; serves `data` as a task with pieces of `pl` bytes.
async fn fake_parent(ip: &str, mode: Fake, data: Arc<Vec<u8>>, pl: u32) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        // A few connections at most; the test aborts this task when done.
        for _ in 0..4 {
            let Ok((sock, _)) = l.accept().await else { return };
            let (rd, mut wr) = sock.into_split();
            let mut rd = FrameReader::new(rd, 1 << 20);
            let hello = Frame::Hello(Hello { max_in_flight: 4, max_frame_len: 1 << 20 });
            if wr.write_all(&hello.to_bytes()).await.is_err() {
                continue;
            }
            while let Ok(Some(f)) = rd.read_frame().await {
                let Frame::Request(r) = f else { continue };
                let off = r.piece as usize * pl as usize;
                let end = (off + pl as usize).min(data.len());
                let mut piece = data[off..end].to_vec();
                let crc = crc32c::crc32c(&piece);
                let header = PieceHeader {
                    id: r.id,
                    task_id: r.task_id,
                    piece: r.piece,
                    offset: off as u64,
                    length: piece.len() as u32,
                    crc32c: crc,
                };
                let mut out = BytesMut::new();
                Frame::Piece(header).encode(&mut out);
                match mode {
                    Fake::FlipBit => {
                        let at = piece.len() / 3;
                        piece[at] ^= 0x10;
                        out.extend_from_slice(&piece);
                    }
                    Fake::HalfThenClose | Fake::HalfThenStall => out.extend_from_slice(&piece[..piece.len() / 2]),
                }
                let _ = wr.write_all(&out).await;
                match mode {
                    Fake::FlipBit => continue,
                    Fake::HalfThenClose => break,
                    Fake::HalfThenStall => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            }
        }
    });
    (addr, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_dying_or_stalling_mid_piece_is_a_typed_error_and_nothing_is_stored() {
    let cd = tempfile::tempdir().unwrap();
    let child = store(&cd);
    let pl = 1u32 << 20;
    let data = Arc::new(content(3, 4 * pl as usize));
    let (ctask, _) = child.get_or_create(&spec(tid(3), data.len() as u64, pl)).unwrap();
    let stall = Duration::from_millis(400);
    let pool = Pool::new(ClientConfig { stall_timeout: stall, ..client_cfg("127.0.0.3") });

    let (dead, h1) = fake_parent("127.0.0.4", Fake::HalfThenClose, data.clone(), pl).await;
    let t0 = Instant::now();
    let e = tokio::time::timeout(LIMIT, pool.fetch_piece(dead, &ctask, 1)).await.unwrap().unwrap_err();
    assert!(matches!(e, TransferError::ConnectionLost { .. }), "{e}");
    assert!(t0.elapsed() < stall * 3, "a closed connection is reported at once");
    assert!(!ctask.has_piece(1));

    let (stuck, h2) = fake_parent("127.0.0.5", Fake::HalfThenStall, data.clone(), pl).await;
    let t0 = Instant::now();
    let e = tokio::time::timeout(LIMIT, pool.fetch_piece(stuck, &ctask, 2)).await.unwrap().unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(e, TransferError::Stalled { .. }), "{e}");
    assert!(took >= stall && took < stall * 3, "stall reported after {took:?}");
    assert!(!ctask.has_piece(2));
    assert!(ctask.completed_pieces().is_empty());
    h1.abort();
    h2.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_piece_is_detected_and_refetched_from_a_good_parent() {
    let (pd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (parent, child) = (store(&pd), store(&cd));
    let pl = 256u32 << 10;
    let data = Arc::new(content(5, 6 * pl as usize + 123));
    let len = data.len() as u64;
    let (ptask, _) = parent.get_or_create(&spec(tid(4), len, pl)).unwrap();
    fill(&ptask, &data, 0..7).await;
    let (server, good) = start_server(parent.clone(), "127.0.0.2", ServerConfig::default()).await;
    let (bad, h) = fake_parent("127.0.0.6", Fake::FlipBit, data.clone(), pl).await;
    let (ctask, _) = child.get_or_create(&spec(tid(4), len, pl)).unwrap();
    let pool = Pool::new(client_cfg("127.0.0.3"));

    let e = tokio::time::timeout(LIMIT, pool.fetch_piece(bad, &ctask, 3)).await.unwrap().unwrap_err();
    assert!(matches!(e, TransferError::CrcMismatch { piece: 3, .. }), "{e}");
    assert!(!ctask.has_piece(3), "a corrupt piece is never stored");
    assert!(pool.is_bad(bad, tid(4)));
    let e = pool.fetch_piece(bad, &ctask, 4).await.unwrap_err();
    assert!(matches!(e, TransferError::ParentBad { .. }), "{e}");

    // What an engine does with CrcMismatch: the same piece from another parent.
    for k in 0..7 {
        tokio::time::timeout(LIMIT, pool.fetch_piece(good, &ctask, k)).await.unwrap().expect("good parent");
    }
    assert_same(&ctask, &data).await;
    server.shutdown();
    h.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_keep_the_connection_and_missing_pieces_are_served_once_complete() {
    let (pd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (parent, child) = (store(&pd), store(&cd));
    let pl = 64u32 << 10;
    let data = content(9, 4 * pl as usize);
    let (ptask, _) = parent.get_or_create(&spec(tid(5), data.len() as u64, pl)).unwrap();
    fill(&ptask, &data, [0]).await;
    let cfg = ServerConfig { piece_wait_timeout: Duration::from_millis(300), ..ServerConfig::default() };
    let (server, addr) = start_server(parent.clone(), "127.0.0.2", cfg).await;
    let pool = Pool::new(client_cfg("127.0.0.3"));

    let (unknown, _) = child.get_or_create(&spec(tid(6), data.len() as u64, pl)).unwrap();
    let e = pool.fetch_piece(addr, &unknown, 0).await.unwrap_err();
    assert!(matches!(e, TransferError::Refused { code: ErrorCode::UnknownTask, .. }), "{e}");

    let (ctask, _) = child.get_or_create(&spec(tid(5), data.len() as u64, pl)).unwrap();
    let e = pool.fetch_piece(addr, &ctask, 2).await.unwrap_err();
    assert!(matches!(e, TransferError::Refused { code: ErrorCode::PieceNotAvailable, piece: 2, .. }), "{e}");

    // A request for a piece the parent is still downloading is answered as soon as it lands.
    let waiter = {
        let (pool, ctask) = (pool.clone(), ctask.clone());
        tokio::spawn(async move { pool.fetch_piece(addr, &ctask, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    fill(&ptask, &data, [1]).await;
    tokio::time::timeout(LIMIT, waiter).await.unwrap().unwrap().expect("served once complete");
    pool.fetch_piece(addr, &ctask, 0).await.expect("same connection still serves");
    assert!(ctask.has_piece(0) && ctask.has_piece(1));
    assert_eq!(server.stats().accepted, 1);
    assert_eq!(pool.connects(), 1);
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_rate_limit_paces_and_load_is_reported() {
    let (pd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (parent, child) = (store(&pd), store(&cd));
    let pl = 1u32 << 20;
    let data = content(13, 8 * pl as usize);
    let (ptask, _) = parent.get_or_create(&spec(tid(7), data.len() as u64, pl)).unwrap();
    fill(&ptask, &data, 0..8).await;
    let cfg = ServerConfig {
        upload_rate: Some(16 << 20),
        upload_burst: 256 << 10,
        max_concurrent_uploads: 1,
        ..ServerConfig::default()
    };
    let (server, addr) = start_server(parent.clone(), "127.0.0.2", cfg).await;
    let pool = Pool::new(client_cfg("127.0.0.3"));
    let (ctask, _) = child.get_or_create(&spec(tid(7), data.len() as u64, pl)).unwrap();
    let t0 = Instant::now();
    tokio::time::timeout(LIMIT, pool.download(addr, &ctask)).await.unwrap().expect("download");
    let took = t0.elapsed();
    // 8 MiB at 16 MiB/s with a 256 KiB burst: about half a second, never much less.
    assert!(took >= Duration::from_millis(420), "rate limit not applied: {took:?}");
    let load = server.load();
    assert!(load.bytes_per_sec > (4 << 20) && load.bytes_per_sec < (40 << 20), "{load:?}");
    assert_eq!(load.connections, 1);
    assert_eq!(load.active_uploads, 0);
    server.shutdown();
}

#[test]
fn thread_per_core_server_serves_and_shuts_down() {
    let (pd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cores = shoal::runtime::Cores::start(2, "up").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let (parent, child) = (store(&pd), store(&cd));
        let pl = 64u32 << 10;
        let data = content(17, 10 * pl as usize);
        let (ptask, _) = parent.get_or_create(&spec(tid(8), data.len() as u64, pl)).unwrap();
        fill(&ptask, &data, 0..10).await;
        let server = UploadServer::new(parent.clone(), ServerConfig::default());
        let (addr, handles) = server.start_on_cores(&cores, "127.0.0.2:0".parse().unwrap()).unwrap();
        assert_eq!(handles.len(), 2);
        let (ctask, _) = child.get_or_create(&spec(tid(8), data.len() as u64, pl)).unwrap();
        let pool = Pool::new(client_cfg("127.0.0.3"));
        tokio::time::timeout(LIMIT, pool.download(addr, &ctask)).await.unwrap().expect("download");
        assert_same(&ctask, &data).await;
        server.shutdown();
        for h in handles {
            tokio::time::timeout(LIMIT, h).await.unwrap().unwrap().expect("accept loop ends cleanly");
        }
    });
    cores.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_the_pool_reconnects() {
    let (pd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (parent, child) = (store(&pd), store(&cd));
    let pl = 64u32 << 10;
    let data = content(19, 2 * pl as usize);
    let (ptask, _) = parent.get_or_create(&spec(tid(9), data.len() as u64, pl)).unwrap();
    fill(&ptask, &data, 0..2).await;
    let (server, addr) = start_server(parent.clone(), "127.0.0.2", ServerConfig::default()).await;
    let pool = Pool::new(ClientConfig { idle_timeout: Duration::from_millis(200), ..client_cfg("127.0.0.3") });
    let (ctask, _) = child.get_or_create(&spec(tid(9), data.len() as u64, pl)).unwrap();
    pool.fetch_piece(addr, &ctask, 0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    pool.fetch_piece(addr, &ctask, 1).await.unwrap();
    assert_eq!(pool.connects(), 2);
    assert_eq!(server.stats().accepted, 2);
    server.shutdown();
}

/// Reads whatever the server sends until it closes (or a short deadline); returns the bytes.
async fn drain(sock: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
        }
    }
    all
}

#[test]
fn random_and_oversized_frames_never_crash_the_server() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let (pd, cd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (parent, child) = (store(&pd), store(&cd));
    let pl = 64u32 << 10;
    let data = content(23, 3 * pl as usize);
    let (server, addr) = rt.block_on(async {
        let (ptask, _) = parent.get_or_create(&spec(tid(10), data.len() as u64, pl)).unwrap();
        fill(&ptask, &data, 0..3).await;
        let cfg = ServerConfig { stall_timeout: Duration::from_millis(300), ..ServerConfig::default() };
        start_server(parent.clone(), "127.0.0.2", cfg).await
    });

    // An oversized frame gets an Error frame, then the connection closes.
    rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&[1, 2, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
        let got = drain(&mut s).await;
        let mut b = BytesMut::from(&got[..]);
        let first = shoal::transfer::frame::decode(&mut b, 1 << 20).unwrap();
        assert!(matches!(first, Some(Frame::Hello(_))));
        match shoal::transfer::frame::decode(&mut b, 1 << 20).unwrap() {
            Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::BadFrame as i32),
            other => panic!("expected an Error frame, got {other:?}"),
        }
    });

    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 1..2048),
        (0u8..14, any::<u32>(), proptest::collection::vec(any::<u8>(), 0..256)).prop_map(|(kind, len, body)| {
            let mut v = vec![1, kind];
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&body);
            v
        }),
    ];
    let mut runner = TestRunner::new(Config { cases: 48, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |bytes| {
            rt.block_on(async {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let _ = s.write_all(&bytes).await;
                // Closing our side ends a half frame; a full bad frame was already refused.
                let _ = s.shutdown().await;
                drain(&mut s).await;
            });
            Ok(())
        })
        .unwrap();

    rt.block_on(async {
        let (ctask, _) = child.get_or_create(&spec(tid(10), data.len() as u64, pl)).unwrap();
        let pool = Pool::new(client_cfg("127.0.0.3"));
        tokio::time::timeout(LIMIT, pool.download(addr, &ctask)).await.unwrap().expect("good client still served");
        assert_same(&ctask, &data).await;
        let stats = server.stats();
        assert!(stats.bad_frames > 10, "{stats:?}");
        server.shutdown();
    });
}
