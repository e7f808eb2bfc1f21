//! The seed use case end to end: real git + git-lfs clients, a real Git LFS server (giftless, whose
//! hrefs carry a jwt that changes on every batch call and which streams chunked with no Range), and Shoal
//! daemons as the proxy: clone on A (cold), clone on B (served from A, the origin's object downloads do
//! not grow), clone again on A (local hit).

mod common;

use common::cluster;
use common::lfs::{clone_through, git_home, publish, Giftless};
use common::*;

#[test]
fn clone_cold_then_from_a_peer_then_from_the_local_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Giftless::start(tmp.path());
    let home = git_home(&tmp.path().join("home"));
    let files = vec![
        ("model.bin", content(80, 24 << 20)),
        ("data.bin", content(81, (6 << 20) + 12345)),
        ("small.bin", content(82, 100_000)),
    ];
    let bare = tmp.path().join("repo.git");
    publish(&home, &tmp.path().join("work"), &bare, &server, &files);
    let uploaded_gets = server.object_gets();

    let sched = cluster::scheduler("127.0.0.3");
    let a = cluster::daemon("127.0.0.70", &[sched.addr], false, &tmp.path().join("a"));
    let b = cluster::daemon("127.0.0.71", &[sched.addr], false, &tmp.path().join("b"));
    let check = |dir: &std::path::Path| {
        for (name, bytes) in &files {
            let got = std::fs::read(dir.join(name)).unwrap();
            assert!(got.len() == bytes.len() && sha256(&got) == sha256(bytes), "{name} differs in {}", dir.display());
        }
    };

    clone_through(&home, a.proxy, &bare, &tmp.path().join("clone-a1"));
    check(&tmp.path().join("clone-a1"));
    let cold = server.object_gets() - uploaded_gets;
    assert_eq!(cold, files.len(), "cold clone: each object fetched from the origin once");

    clone_through(&home, b.proxy, &bare, &tmp.path().join("clone-b"));
    check(&tmp.path().join("clone-b"));
    assert_eq!(server.object_gets() - uploaded_gets, cold, "clone on B: objects came from A, not the origin");
    // giftless's hrefs carry a jwt: the copies are private, and B asked the origin about each one (HEAD).
    assert_eq!(server.object_requests("HEAD"), files.len(), "clone on B: one authorization probe per object");

    // giftless's jwt changes once a second: the next batch call gets new ones.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    clone_through(&home, a.proxy, &bare, &tmp.path().join("clone-a2"));
    check(&tmp.path().join("clone-a2"));
    assert_eq!(server.object_gets() - uploaded_gets, cold, "second clone on A: local hits");
    assert_eq!(server.object_requests("HEAD"), 2 * files.len(), "a new batch call, a new jwt: asked again");
}
