//! Replays every input kept under fuzz/corpus/<target>/ and fuzz/regressions/<target>/ through the fuzz
//! targets' bodies (shoal::fuzzing), on the stable toolchain: the corpora libFuzzer grew and every crash it
//! ever found stay passing in a plain `cargo test`. docs/reliability.md says how the corpora were made.

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else { return Vec::new() };
    let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

#[test]
fn every_kept_input_runs_through_its_target_without_panicking() {
    let mut total = 0;
    for (name, target) in shoal::fuzzing::TARGETS {
        let corpus = inputs("corpus", name);
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty: a target without seeds");
        for p in corpus.iter().chain(inputs("regressions", name).iter()) {
            let data = std::fs::read(p).unwrap();
            // A panic names the input that caused it.
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "{name} panicked on {}", p.display());
            total += 1;
        }
    }
    assert!(total >= shoal::fuzzing::TARGETS.len());
}

/// Each target directory under fuzz/ names a target the library has, and the other way round.
#[test]
fn fuzz_binaries_and_corpora_match_the_targets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (name, _) in shoal::fuzzing::TARGETS {
        let bin = std::fs::read_to_string(root.join("fuzz_targets").join(format!("{name}.rs"))).unwrap();
        assert!(bin.contains(&format!("shoal::fuzzing::{name}(")), "fuzz_targets/{name}.rs calls another target");
    }
    for e in std::fs::read_dir(root.join("corpus")).unwrap() {
        let n = e.unwrap().file_name().into_string().unwrap();
        assert!(shoal::fuzzing::TARGETS.iter().any(|(t, _)| *t == n), "fuzz/corpus/{n} has no target");
    }
}
