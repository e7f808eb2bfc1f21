//! Back to source over several ranged connections: an origin that proves it serves ranges has the rest
//! of a large object fetched in contiguous segments, each on its own connection, every piece once; an
//! origin that ignores Range is read on one connection as before. Real daemons and `shoal get` against
//! the test origin (whose frames are paced per connection, as a per-connection rate cap would);
//! every address is on 127.0.0.0/8.

mod common;

use std::time::Duration;

use common::cluster::{self, get};
use common::origin::{Origin, FLAVOURS};
use common::{content, sha256};

const LEN: usize = (160 << 20) + 12345;

/// Fetches a fresh object through a daemon at `ip`, the origin sending 256 KiB per connection every
/// `pace` (a per-connection cap of 256 KiB / `pace`).
fn fetch(origin: &Origin, ip: &str, yaml: &str, pace: Duration) -> String {
    let (_, oid, url) = origin.put_lfs(130, LEN);
    origin.set_frame_delay(pace);
    let tmp = tempfile::tempdir().unwrap();
    let d = cluster::daemon_with(ip, &[], false, &tmp.path().join("d"), yaml);
    let out = tmp.path().join("out");
    let (ok, err) = get(&d, &url, &out, None);
    assert!(ok, "{err}");
    assert_eq!(hex::encode(sha256(&std::fs::read(&out).unwrap())), oid);
    err
}

#[test]
fn an_origin_that_serves_ranges_is_read_over_several_connections_every_byte_once() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    // 32 MB/s per connection: each connection the download adds raises its rate, so it widens.
    let err = fetch(&origin, "127.0.0.97", "", Duration::from_millis(8));
    assert!(err.contains("source=origin"), "{err}");
    let ranges = origin.ranges();
    // 41 pieces of 4 MiB: the first request asks for a 16 MiB window (4 pieces) and proves ranges; the
    // other 37 pieces go in 8 MiB chunks (2 pieces), in order, over up to 4 connections, the last chunk
    // to the end.
    assert_eq!(ranges.len(), 20, "{ranges:?}");
    assert_eq!(ranges[0], format!("bytes=0-{}", (16 << 20) - 1));
    let mut chunks: Vec<(u64, Option<u64>)> = ranges[1..]
        .iter()
        .map(|r| {
            let (a, b) = r.strip_prefix("bytes=").unwrap().split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().ok())
        })
        .collect();
    chunks.sort();
    let mib = 1u64 << 20;
    let mut want: Vec<(u64, Option<u64>)> =
        (0..18).map(|i| ((16 + 8 * i) * mib, Some((24 + 8 * i) * mib - 1))).collect();
    want.push((160 * mib, None));
    assert_eq!(chunks, want, "contiguous, bounded chunks on piece boundaries: {ranges:?}");
    assert_eq!(origin.bytes_sent(), LEN as u64, "every byte once: no connection was cut mid-body");
    // Each connection takes its next chunk on the connection the last one ended on (keep-alive).
    assert!(origin.connections() <= 4, "20 ranged GETs over {} connections", origin.connections());
    assert!(origin.connections() >= 2, "a capped origin is read over more than one connection");
}

#[test]
fn one_connection_when_the_origin_ignores_ranges_or_the_operator_says_so() {
    let no_ranges = Origin::start("127.0.0.2", FLAVOURS[1]);
    fetch(&no_ranges, "127.0.0.98", "", Duration::from_millis(2));
    assert_eq!(no_ranges.requests(), 1, "a 200 to the window's range is read whole");
    assert_eq!(no_ranges.bytes_sent(), LEN as u64);

    let ranges = Origin::start("127.0.0.2", FLAVOURS[0]);
    fetch(&ranges, "127.0.0.99", "engine:\n  origin_connections: 1\n", Duration::from_millis(2));
    assert_eq!((ranges.requests(), ranges.ranges().len()), (1, 0), "one plain GET");
}

/// A new version uploaded while a download is split over connections: the chunk requests carry the
/// window's ETag in If-Range, the origin answers them with the whole new version (200), and the download
/// fails cleanly instead of joining two versions into an object that, named by its URL, no digest would
/// catch. The next request fetches the new version whole.
#[test]
fn a_version_change_mid_download_fails_it_instead_of_mixing_versions() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (old, new) = (content(150, 100 << 20), content(151, 100 << 20));
    origin.put("/files/model.bin", old.into());
    origin.replace_after_next_request("/files/model.bin", new.clone().into());
    let tmp = tempfile::tempdir().unwrap();
    let d = cluster::daemon("127.0.0.104", &[], false, &tmp.path().join("d"));
    let url = origin.url("/files/model.bin");
    let out = tmp.path().join("first");
    let (ok, err) = get(&d, &url, &out, None);
    assert!(!ok, "two versions must never make one object: {err}");
    assert!(!out.exists(), "no file from a failed download");

    let out = tmp.path().join("second");
    let (ok, err) = get(&d, &url, &out, None);
    assert!(ok, "{err}");
    assert!(std::fs::read(&out).unwrap() == new, "the new version, whole");
}
