//! The `shoal` binary as an operator runs it: start, pick an io engine, stop cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use shoal::storage::{IoEngineChoice, Store, StoreConfig};

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

/// Kills the daemon if the test fails before stopping it.
struct Reap(std::process::Child);
impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a daemon and returns it with a channel of its log lines.
fn start_daemon(dir: &std::path::Path) -> (Reap, mpsc::Receiver<String>) {
    let mut child = shoal()
        .args(["daemon", "--data-dir"])
        .arg(dir)
        .args(["--gc-interval", "1s", "--workers", "2"])
        .args(["--proxy-addr", "127.0.0.1:0", "--upload-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Reap(child), rx)
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(l) => eprintln!("daemon: {l}"),
            Err(_) => break,
        }
    }
    panic!("daemon never logged {needle:?}");
}

#[test]
fn daemon_reports_its_engine_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // An unfinished download left by an earlier process that was killed (DIRTY set).
    {
        let store = open(dir.path(), IoEngineChoice::Sync);
        let t = store.create(&spec(1, Some(1 << 20), 64 << 10, None)).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(t.write_piece(0, bytes::Bytes::from(content(1, 64 << 10)), None)).unwrap();
    }
    let (mut child, rx) = start_daemon(dir.path());
    let child = &mut child.0;
    let line = wait_line(&rx, "storage opened");
    let forced_sync = std::env::var("SHOAL_IO_ENGINE").as_deref() == Ok("sync");
    let want = if forced_sync { "engine=\"sync\"" } else { "engine=\"uring\"" };
    assert!(line.contains(want), "{line}");
    assert!(line.contains("unclean=1"), "the killed download is noticed: {line}");
    wait_line(&rx, "daemon started");
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    wait_line(&rx, "storage closed cleanly");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    // The next start finds a clean store with the piece intact.
    let (store, report) = Store::open(StoreConfig::new(dir.path())).unwrap();
    assert_eq!((report.loaded, report.unclean), (1, 0));
    assert!(store.get(&id(1)).unwrap().has_piece(0));
}

#[test]
fn bad_flags_and_unreachable_daemons_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = shoal().args(["daemon", "--io-engine", "bogus", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown io engine"), "{out:?}");
    let out = shoal().args(["daemon", "--quota", "lots", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size"), "{out:?}");
    // No daemon listening: the in-process engine tries the origin, which does not exist here: a one-line
    // reason, a non-zero exit, and no file left behind.
    let out_file = dir.path().join("out");
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = shoal()
        .args(["get", "http://x.invalid/a", "--daemon", &free.to_string(), "--data-dir"])
        .arg(dir.path().join("cache"))
        .arg("-O")
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("origin unreachable"), "{out:?}");
    assert!(!out_file.exists());
    let out = shoal().args(["get", "http://x.test/a", "--digest", "md5:00", "-O"]).arg(&out_file).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid --digest"), "{out:?}");
}
