//! What the schedulers know of a node's cache across its life: a restarted daemon announces the complete
//! digest-named tasks it holds, so peers take them from it before anyone asks it for them; and a task
//! that GC deletes is withdrawn, so no peer is sent to a node that no longer has it. Real schedulers and
//! daemons; every address is on 127.0.0.0/8.

mod common;

use std::time::Duration;

use common::cluster::{self, get};
use common::origin::{Origin, FLAVOURS};
use common::sha256;

fn fetched_sha(out: &std::path::Path) -> String {
    hex::encode(sha256(&std::fs::read(out).unwrap()))
}

#[test]
fn a_restarted_daemon_announces_what_it_holds_and_peers_take_it_from_there() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (_, oid, url) = origin.put_lfs(140, 9 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    let dir_a = tmp.path().join("a");
    let a = cluster::daemon("127.0.0.100", &[sched.addr], false, &dir_a);
    let (ok, err) = get(&a, &url, &tmp.path().join("a.out"), None);
    assert!(ok && err.contains("source=origin"), "{err}");
    drop(a);
    sched.proc.wait_for("host disconnected; removed from its tasks", Duration::from_secs(10));

    // A comes back; nobody asks it for anything, yet the scheduler learns what it holds.
    let a = cluster::daemon("127.0.0.100", &[sched.addr], false, &dir_a);
    a.proc.wait_for("stored tasks announced to the schedulers tasks=1", Duration::from_secs(10));
    let b = cluster::daemon("127.0.0.101", &[sched.addr], false, &tmp.path().join("b"));
    let out = tmp.path().join("b.out");
    let (ok, err) = get(&b, &url, &out, None);
    assert!(ok && err.contains("source=peer"), "{err}");
    assert_eq!(fetched_sha(&out), oid);
    assert_eq!(origin.body_requests(), 1, "B took A's stored copy");
}

#[test]
fn a_task_deleted_by_gc_is_withdrawn_from_the_schedulers() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (_, oid, url) = origin.put_lfs(141, 9 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let sched = cluster::scheduler("127.0.0.3");
    // A keeps nothing for long: every task expires a second after it was last read.
    let yaml = "storage:\n  ttl: 1s\n  gc_interval: 1s\n";
    let a = cluster::daemon_with("127.0.0.102", &[sched.addr], false, &tmp.path().join("a"), yaml);
    let (ok, err) = get(&a, &url, &tmp.path().join("a.out"), None);
    assert!(ok && err.contains("source=origin"), "{err}");
    a.proc.wait_for("expired=1", Duration::from_secs(10));
    sched.proc.wait_for("host left the task", Duration::from_secs(10));

    // B is sent to the origin at once, not to A for a task A no longer has.
    let b = cluster::daemon("127.0.0.103", &[sched.addr], false, &tmp.path().join("b"));
    let out = tmp.path().join("b.out");
    let (ok, err) = get(&b, &url, &out, None);
    assert!(ok && err.contains("source=origin"), "{err}");
    assert_eq!(fetched_sha(&out), oid);
    assert_eq!(b.proc.count("parent dropped"), 0, "no parent was tried");
}
