//! A daemon killed (SIGKILL) mid back-to-source and started again goes on from its first missing piece
//! with a Range request, when the origin proves it serves ranges: the origin sends little more than the
//! object once over both attempts, and the joined object is held to its digest. Real daemons and
//! `shoal get` against the test origin; every address is on 127.0.0.0/8.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{self, get, Daemon};
use common::origin::{Origin, FLAVOURS};
use common::sha256;

const LEN: usize = 40 << 20;

/// Kills a daemon once half the object left the origin, starts it again on the same store and fetches
/// again: (origin bytes of the second attempt, origin bytes when killed, the second daemon).
fn crash_then_fetch_again(
    ip: &str,
    origin: &Origin,
    url: &str,
    oid: &str,
    tmp: &std::path::Path,
) -> (u64, u64, Daemon) {
    // 160 frames of 256 KiB, 25 ms apart: about 4 s for the whole object.
    origin.set_frame_delay(Duration::from_millis(25));
    let dir = tmp.join(ip);
    let mut d = cluster::daemon(ip, &[], false, &dir);
    let first = {
        let (proxy, url, out) = (d.proxy, url.to_owned(), tmp.join("first"));
        std::thread::spawn(move || cluster::get_via(proxy, &url, &out, None))
    };
    // Bounded: the whole body takes about 4 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while origin.bytes_sent() < (LEN / 2) as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    d.proc.kill();
    let at_kill = origin.bytes_sent();
    assert!(at_kill >= (LEN / 2) as u64 && at_kill < LEN as u64, "killed mid-body at {at_kill}");
    let (ok, _) = first.join().unwrap();
    assert!(!ok, "the first client saw its download fail");

    origin.set_frame_delay(Duration::ZERO);
    let d = cluster::daemon(ip, &[], false, &dir);
    let out = tmp.join("second");
    let (ok, err) = get(&d, url, &out, None);
    assert!(ok, "{err}");
    assert_eq!(hex::encode(sha256(&std::fs::read(&out).unwrap())), oid);
    (origin.bytes_sent() - at_kill, at_kill, d)
}

#[test]
fn a_download_cut_by_a_crash_resumes_from_its_first_missing_piece() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (_, oid, url) = origin.put_lfs(120, LEN);
    let tmp = tempfile::tempdir().unwrap();
    let (second, at_kill, d) = crash_then_fetch_again("127.0.0.95", &origin, &url, &oid, tmp.path());
    let line = d.proc.wait_for("resuming from the origin", Duration::from_secs(5));
    // Pieces are 4 MiB: what reached the disk before the kill is at most a few pieces short of what left
    // the origin, and none of it is fetched again.
    assert!(second <= LEN as u64 - at_kill + (12 << 20), "second attempt took {second} bytes: {line}");
    assert!(second < LEN as u64 - (8 << 20), "the stored pieces were not fetched again ({second} bytes)");
    eprintln!("origin bytes over both attempts: {:.3}x the object", origin.bytes_sent() as f64 / LEN as f64);
}

/// An origin that ignores Range answers the resumed request with the whole object (200): the download
/// starts over from the first byte, and the object is still whole and right.
#[test]
fn an_origin_without_ranges_sends_the_whole_object_again() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[1]);
    let (_, oid, url) = origin.put_lfs(120, LEN);
    let tmp = tempfile::tempdir().unwrap();
    let (second, _, d) = crash_then_fetch_again("127.0.0.96", &origin, &url, &oid, tmp.path());
    assert_eq!(second, LEN as u64, "a 200 is the whole object");
    assert_eq!(d.proc.count("resuming from the origin"), 0);
}

/// A task named by its URL alone (no digest to hold the pieces to) cut by a crash, whose object the origin
/// replaces with another of the same length before the restart: the restarted daemon must serve the new
/// object whole, never the old pieces joined to new ones.
#[test]
fn a_url_task_resumed_after_the_object_changed_is_not_a_mix() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let old = bytes::Bytes::from(common::content(121, LEN));
    let new = bytes::Bytes::from(common::content(122, LEN));
    origin.put("/files/changing.bin", old);
    let url = origin.url("/files/changing.bin");
    let tmp = tempfile::tempdir().unwrap();
    origin.set_frame_delay(Duration::from_millis(25));
    let dir = tmp.path().join("d");
    let mut d = cluster::daemon("127.0.0.97", &[], false, &dir);
    let first = {
        let (proxy, url, out) = (d.proxy, url.clone(), tmp.path().join("first"));
        std::thread::spawn(move || cluster::get_via(proxy, &url, &out, None))
    };
    // Bounded: the whole body takes about 4 s.
    let deadline = Instant::now() + Duration::from_secs(30);
    while origin.bytes_sent() < (LEN * 3 / 4) as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    d.proc.kill();
    let _ = first.join().unwrap();
    origin.set_frame_delay(Duration::ZERO);
    origin.put("/files/changing.bin", new.clone());

    let d = cluster::daemon("127.0.0.97", &[], false, &dir);
    let out = tmp.path().join("second");
    let (ok, err) = get(&d, &url, &out, None);
    assert!(ok, "{err}");
    let got = std::fs::read(&out).unwrap();
    let mixed = (0..LEN / (4 << 20))
        .filter(|k| got[k * (4 << 20)..(k + 1) * (4 << 20)] != new[k * (4 << 20)..(k + 1) * (4 << 20)])
        .count();
    assert_eq!(mixed, 0, "{mixed} pieces of the old object were served as part of the new one");
}
