//! Wall-clock steps on a node do not evict the tasks it is using (issue 16, network-fault matrix, clock
//! steps). The daemon runs under libfaketime with a timestamp file rewritten while it runs (the machine's
//! clock is never touched); its monotonic clock is left alone, as a real step leaves it. TTL 1 h, GC every
//! second: a task read moments before a +2 d step, or read while the clock is 2 d behind and then
//! corrected, must still be served locally afterwards. Before storage took its time from a step-proof
//! clock (src/storage/clock.rs), both steps expired the task at the next GC pass.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::cluster::{self, get};
use common::origin::{Origin, FLAVOURS};

fn libfaketime() -> PathBuf {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("libfaketime is not installed: run scripts/install-test-deps.sh")
}

/// Two GC passes (one per second) after a step, with a margin.
const AFTER_STEP: Duration = Duration::from_millis(3_500);

#[test]
fn clock_steps_do_not_expire_tasks_read_just_before() {
    let origin = Origin::start("127.0.0.2", FLAVOURS[0]);
    let (_, oid_a, url_a) = origin.put_lfs(160, 1 << 20);
    let (_, oid_b, url_b) = origin.put_lfs(161, 1 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let stamp = tmp.path().join("faketime");
    std::fs::write(&stamp, "+0\n").unwrap();
    let lib = libfaketime();
    let env: [(&str, &Path); 4] = [
        ("LD_PRELOAD", &lib),
        ("FAKETIME_TIMESTAMP_FILE", &stamp),
        ("FAKETIME_NO_CACHE", Path::new("1")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", Path::new("1")),
    ];
    let yaml = "storage:\n  ttl: 1h\n  gc_interval: 1s\n";
    let d = cluster::daemon_env("127.0.0.150", &[], false, &tmp.path().join("d"), yaml, &env);
    let fetch = |url: &str, oid: &str, name: &str| {
        let (ok, err) = get(&d, url, &tmp.path().join(name), Some(&format!("sha256:{oid}")));
        assert!(ok, "{err}");
        err
    };
    assert!(fetch(&url_a, &oid_a, "a1").contains("source=origin"));

    // Forward step of 2 days (> TTL) right after the read.
    std::fs::write(&stamp, "+2d\n").unwrap();
    // The step reached the daemon: what it logs now carries the faked date.
    assert!(fetch(&url_b, &oid_b, "b1").contains("source=origin"));
    let ahead = humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(2 * 86_400)).to_string();
    d.proc.wait_for(&ahead[..10], Duration::from_secs(5));
    std::thread::sleep(AFTER_STEP);
    assert_eq!(d.proc.count("expired="), 0, "a forward step expired a task read seconds before");

    // Backward step: a read while the clock is 2 days behind, then the clock corrected.
    std::fs::write(&stamp, "-2d\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(fetch(&url_a, &oid_a, "a2").contains("source=local"));
    std::fs::write(&stamp, "+0\n").unwrap();
    std::thread::sleep(AFTER_STEP);
    assert_eq!(d.proc.count("expired="), 0, "a corrected backward step expired a task read seconds before");
    assert!(fetch(&url_a, &oid_a, "a3").contains("source=local"));
    assert!(fetch(&url_b, &oid_b, "b2").contains("source=local"));
    assert_eq!(origin.body_requests(), 2, "each object came from the origin once");
}
