//! kill -9 at random instants while a child process writes pieces: after every kill, each piece the
//! metadata calls complete must hold exactly the bytes that were written, and the task must finish
//! correctly when a last child runs to the end.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};
use shoal::storage::{IoEngineChoice, StorageError};

const TASK: u8 = 42;
const PIECE: u32 = 128 << 10;
const PIECES: u32 = 512; // 64 MiB
const SEED: u64 = 4242;

fn task_bytes() -> Vec<u8> {
    content(SEED, (PIECE * PIECES) as usize)
}

/// Not a test of its own: the body of the child process that `kill9_at_random_instants` starts.
#[test]
#[ignore = "run only as the child process of kill9_at_random_instants"]
fn crash_child_writer() {
    let Some(dir) = std::env::var_os("SHOAL_CRASH_DIR") else {
        return;
    };
    let engine: IoEngineChoice = std::env::var("SHOAL_CRASH_ENGINE").unwrap().parse().unwrap();
    let store = open(std::path::Path::new(&dir), engine);
    let all = task_bytes();
    let (task, _) = store.get_or_create(&spec(TASK, Some(all.len() as u64), PIECE, Some(sha256(&all)))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(std::process::id() as u64);
    println!("CHILD-STARTED");
    rt.block_on(async {
        let mut missing: Vec<u32> = (0..PIECES).filter(|&k| !task.has_piece(k)).collect();
        // Several pieces in flight at once, in random order, as pieces from several parents would be.
        while !missing.is_empty() {
            let batch: Vec<u32> =
                (0..4.min(missing.len())).map(|_| missing.swap_remove(rng.gen_range(0..missing.len()))).collect();
            let futs: Vec<_> = batch.iter().map(|&k| task.write_piece(k, piece_of(&all, PIECE, k), None)).collect();
            for f in futs {
                f.await.unwrap();
            }
        }
        task.wait_complete().await.unwrap();
    });
    println!("CHILD-DONE");
}

fn spawn_child(dir: &std::path::Path, engine: IoEngineChoice) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_writer", "--ignored", "--nocapture", "--test-threads=1"])
        .env("SHOAL_CRASH_DIR", dir)
        .env("SHOAL_CRASH_ENGINE", if engine == IoEngineChoice::Uring { "uring" } else { "sync" })
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Opens the store as a restarted daemon would and checks every piece marked complete.
fn verify(dir: &std::path::Path, engine: IoEngineChoice, all: &[u8]) -> u32 {
    let store = open(dir, engine);
    let Some(task) = store.get(&id(TASK)) else {
        return 0;
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut complete = 0;
    rt.block_on(async {
        for k in 0..PIECES {
            if !task.has_piece(k) {
                continue;
            }
            match task.read_piece(k).await {
                Ok(b) => assert!(b == piece_of(all, PIECE, k), "piece {k}: marked complete with wrong bytes"),
                Err(e @ StorageError::CrcMismatch { .. }) => {
                    panic!("piece {k} marked complete but {e}")
                }
                Err(e) => panic!("piece {k}: {e}"),
            }
            complete += 1;
        }
    });
    complete
}

#[test]
fn kill9_at_random_instants() {
    let all = task_bytes();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for engine in engines() {
        let dir = tempfile::tempdir().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut kills = 0;
        let mut last = 0;
        let mut partial = 0;
        // Bounded by count and by time.
        for round in 0..12 {
            if Instant::now() > deadline {
                break;
            }
            let mut child = spawn_child(dir.path(), engine);
            // Start the clock when the child is writing, not while it is still being exec'd.
            let mut line = String::new();
            let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
            while std::io::BufRead::read_line(&mut out, &mut line).unwrap_or(0) > 0 && !line.contains("CHILD-STARTED") {
                line.clear();
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..40)));
            // SIGKILL: no destructor, no flush, nothing runs in the child after this.
            let _ = child.kill();
            let _ = child.wait();
            kills += 1;
            let complete = verify(dir.path(), engine, &all);
            assert!(complete >= last || round == 0, "pieces never disappear without corruption");
            last = complete;
            partial += (complete > 0 && complete < PIECES) as u32;
        }
        assert!(partial >= 2, "{engine:?}: only {partial} kills landed mid-download; the test proved nothing");
        // A final child finishes the job from whatever the kills left.
        let child = spawn_child(dir.path(), engine);
        let out = child.wait_with_output().unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("CHILD-DONE"), "{engine:?}: final child failed");
        assert_eq!(verify(dir.path(), engine, &all), PIECES);
        let store = open(dir.path(), engine);
        let task = store.get(&id(TASK)).unwrap();
        assert!(task.is_complete());
        assert_eq!(task.sha256(), Some(sha256(&all)));
        eprintln!("{engine:?}: {kills} kills ({partial} mid-download), then completed with the right sha256");
    }
}
