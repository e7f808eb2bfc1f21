//! A rogue member that declares pieces over 64 MiB: a real store and upload server holding an object as one
//! 128 MiB piece, registered with a real scheduler as a member (it holds the cluster secret), so the
//! scheduler offers it as a parent. A real daemon must not size its piece buffers by that word: it logs
//! the parent as not used and takes the object elsewhere (here, the origin), with the right bytes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::cluster::{self, get};
use common::origin::{Origin, FLAVOURS};
use common::sha256;
use shoal::membership::{ClusterKey, HostIdentity};
use shoal::scheduler::{ClientConfig, Decision, HostInfo, SchedulerClient, TaskProgress, TaskRequest};
use shoal::storage::{Store, StoreConfig, TaskId, TaskSpec};
use shoal::transfer::{ServerConfig, UploadServer};

const LEN: usize = 12 << 20;
const ROGUE_PIECE: u32 = 128 << 20;

/// Starts the rogue member on 127.0.0.90 holding `obj` as one piece of [`ROGUE_PIECE`] bytes, and makes it
/// the task's only parent at `sched`. Returns what keeps it alive.
async fn rogue(dir: &std::path::Path, sched: std::net::SocketAddr, obj: Bytes) -> (UploadServer, SchedulerClient) {
    let key = ClusterKey::from_secret(cluster::SECRET.as_bytes()).unwrap();
    let store = Store::open(StoreConfig::new(dir)).unwrap().0;
    let digest = sha256(&obj);
    let id = TaskId(digest);
    let spec = TaskSpec {
        id,
        url: "http://origin.test/rogue".into(),
        content_length: Some(LEN as u64),
        piece_length: Some(ROGUE_PIECE),
        expected_sha256: Some(digest),
        digest_announced: false,
        credentialed: false,
    };
    let task = store.get_or_create(&spec).unwrap().0;
    task.write_piece(0, obj, None).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), task.wait_complete()).await.unwrap().unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.90:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let server = UploadServer::new(store, ServerConfig { membership: Some(key.clone()), ..ServerConfig::default() });
    let s = server.clone();
    tokio::spawn(async move { s.serve(l).await });

    let identity = Arc::new(HostIdentity::generate().unwrap());
    let host = HostInfo {
        host_id: identity.host_id("rogue"),
        hostname: "rogue".into(),
        ip: "127.0.0.90".parse().unwrap(),
        upload_port: port,
        upload_capacity_bytes_per_sec: 1 << 30,
        is_seed: false,
    };
    let cfg = ClientConfig { membership: Some(key), identity: Some(identity), ..ClientConfig::default() };
    let client = SchedulerClient::with_config(vec![sched.to_string()], host, cfg);
    let req = TaskRequest {
        task_id: id,
        url: "http://origin.test/rogue".into(),
        headers: vec![],
        content_length: Some(LEN as u64),
        piece_length: Some(ROGUE_PIECE),
        private: false,
        credentialed: false,
    };
    let answer = client.request_task(&req).await.unwrap();
    assert_eq!(answer.decision, Decision::BackToSource, "the rogue is the task's first peer");
    let p = TaskProgress {
        task_id: id,
        pieces_complete: 1,
        piece_count: Some(1),
        content_length: Some(LEN as u64),
        piece_length: ROGUE_PIECE,
        back_to_source: true,
        credentialed: false,
    };
    client.task_progress(&p).await.unwrap();
    client.task_finished(id, LEN as u64, ROGUE_PIECE, Some(digest)).await.unwrap();
    (server, client)
}

#[test]
fn a_parent_declaring_pieces_over_64_mib_is_not_used() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (obj, oid, url) = origin.put_lfs(99, LEN);
    let tmp = tempfile::tempdir().unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _rogue = rt.block_on(rogue(&tmp.path().join("rogue"), sched.addr, obj));

    let yaml = "engine:\n  parent_wait: 1s\n";
    let c = cluster::daemon_with("127.0.0.91", &[sched.addr], false, &tmp.path().join("c"), yaml);
    let out = tmp.path().join("c.out");
    let (ok, err) = get(&c, &url, &out, None);
    assert!(ok, "{err}");
    assert_eq!(hex::encode(sha256(&std::fs::read(&out).unwrap())), oid);
    c.proc.wait_for("parent declares pieces over 64 MiB; not used", Duration::from_secs(5));
    assert!(err.contains("source=origin"), "{err}");
    assert_eq!(origin.body_requests(), 1, "the object came from the origin, not through the rogue's geometry");
}
